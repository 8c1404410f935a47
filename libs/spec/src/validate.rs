//! Semantic checks on parsed definitions; every check reports the key path it is about.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::{EVENT_FIELDS, EventRef, Ref, TEMPLATE_ROOTS, template_refs};
use crate::did_you_mean;
use crate::filter::GlobList;
use crate::locate::{Seg, kp};
use crate::model::{
    Concurrency, Content, Metadata, Policy, ShardCount, Step, Strategy, TriggerSpec, WebhookMatch,
    WorkflowSpec,
};
use crate::trigger::{Schedule, WEBHOOK_EVENTS, parse_timezone};

pub(crate) struct Problem {
    pub path: Vec<Seg>,
    pub message: String,
    pub hint: Option<String>,
}

fn problem(path: Vec<Seg>, message: impl Into<String>, hint: impl Into<String>) -> Problem {
    Problem {
        path,
        message: message.into(),
        hint: Some(hint.into()),
    }
}

/// A DNS-1123 label: lowercase alphanumerics and '-', starting and ending alphanumeric, ≤ 63.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_param_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

pub(crate) fn metadata(m: &Metadata) -> Vec<Problem> {
    let mut out = Vec::new();
    if !is_dns_label(&m.name) {
        out.push(problem(
            kp!["metadata", "name"],
            format!("invalid name `{}`", m.name),
            "use at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit",
        ));
    }
    out
}

pub(crate) fn workflow(spec: &WorkflowSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    let declared: Vec<&str> = spec.config.keys().map(String::as_str).collect();

    for (name, p) in &spec.config {
        let at = kp!["spec", "config", name.as_str()];
        if !is_param_name(name) {
            out.push(problem(
                at.clone(),
                format!("invalid parameter name `{name}`"),
                "use letters, digits, '_' and '-', starting with a letter or '_'",
            ));
        }
        if let Some(default) = &p.default
            && p.r#type.check(default).is_none()
        {
            let mut at = at;
            at.push("default".into());
            out.push(problem(
                at,
                format!(
                    "default `{default}` of parameter `{name}` is not {}",
                    p.r#type.expected()
                ),
                format!("change the default or the type (`type: {}`)", p.r#type),
            ));
        }
    }

    let matrix_keys: Vec<&str> = spec
        .parallel
        .matrix
        .as_ref()
        .map(|m| m.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let check_template = |out: &mut Vec<Problem>, at: Vec<Seg>, text: &str| {
        for target in template_refs(text) {
            match target {
                Ref::Config(name) if !spec.config.contains_key(name) => {
                    let mut hint = format!(
                        "declare it under spec.config (declared: {})",
                        list(&declared)
                    );
                    if let Some(best) = did_you_mean(name, declared.iter().copied()) {
                        hint = format!("did you mean `{best}`? or {hint}");
                    }
                    out.push(problem(
                        at.clone(),
                        format!("template refers to undeclared parameter `config.{name}`"),
                        hint,
                    ));
                }
                Ref::Matrix(key) if !matrix_keys.contains(&key) => {
                    let mut hint = if matrix_keys.is_empty() {
                        "declare it under spec.parallel.matrix (this workflow has no matrix)"
                            .to_string()
                    } else {
                        format!(
                            "declare it under spec.parallel.matrix (declared: {})",
                            list(&matrix_keys)
                        )
                    };
                    if let Some(best) = did_you_mean(key, matrix_keys.iter().copied()) {
                        hint = format!("did you mean `{best}`? or {hint}");
                    }
                    out.push(problem(
                        at.clone(),
                        format!("template refers to undeclared matrix parameter `matrix.{key}`"),
                        hint,
                    ));
                }
                Ref::Event(EventRef::Unknown(name)) => out.push(problem(
                    at.clone(),
                    format!("template refers to unknown event field `event.{name}`"),
                    format!("use {EVENT_FIELDS}"),
                )),
                Ref::Misspelt { root, known } => out.push(problem(
                    at.clone(),
                    format!("template refers to unknown root `{root}`"),
                    format!(
                        "did you mean `{known}`? templates name {}",
                        TEMPLATE_ROOTS
                            .iter()
                            .map(|r| format!("`{r}.…`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )),
                _ => {}
            }
        }
    };

    for (k, v) in &spec.env {
        check_template(&mut out, kp!["spec", "env", k.as_str()], v);
    }
    if let Some(c) = &spec.container {
        for (k, v) in &c.env {
            check_template(&mut out, kp!["spec", "container", "env", k.as_str()], v);
        }
        // The shard's container runs assay-runner, which runs the steps and tests: a
        // command of the image's own would never run, so it is refused, not ignored.
        for (field, set) in [
            ("command", !c.command.is_empty()),
            ("args", !c.args.is_empty()),
        ] {
            if set {
                out.push(problem(
                    kp!["spec", "container", field],
                    format!(
                        "container.{field}: not used: the shard's container runs assay-runner, which runs the workflow's steps and tests"
                    ),
                    "put the command in a step's `run` or in `tests.run`".to_string(),
                ));
            }
        }
    }

    let mut step_names: BTreeMap<&str, &str> = BTreeMap::new();
    for (section, steps) in [
        ("setup", &spec.setup),
        ("steps", &spec.steps),
        ("after", &spec.after),
    ] {
        for (i, step) in steps.iter().enumerate() {
            let at = kp!["spec", section, i];
            step_problems(&mut out, &at, step);
            let mut run_at = at.clone();
            run_at.push("run".into());
            check_template(&mut out, run_at, &step.run);
            for (k, v) in &step.env {
                let mut env_at = at.clone();
                env_at.extend(kp!["env", k.as_str()]);
                check_template(&mut out, env_at, v);
            }
            if let Some(first) = step_names.insert(step.name.as_str(), section) {
                let mut name_at = at.clone();
                name_at.push("name".into());
                out.push(problem(
                    name_at,
                    format!("duplicate step name `{}` (also in {first})", step.name),
                    "give every step of a workflow its own name",
                ));
            }
        }
    }

    if let Some(tests) = &spec.tests {
        if tests.run.trim().is_empty() {
            out.push(problem(
                kp!["spec", "tests", "run"],
                "tests.run is empty",
                "give the command that runs tests, e.g. `pytest {tests} --junitxml={report}`",
            ));
        }
        check_template(&mut out, kp!["spec", "tests", "run"], &tests.run);
        if let Some(list) = &tests.list {
            check_template(&mut out, kp!["spec", "tests", "list"], list);
            if !tests.run.contains("{tests}") {
                out.push(problem(
                    kp!["spec", "tests", "run"],
                    "tests.run has no `{tests}` placeholder although tests.list is given",
                    "put `{tests}` where the test ids go, e.g. `pytest {tests}`, or remove tests.list",
                ));
            }
        }
        let wants_report = tests.reports.iter().any(|r| r.contains("{report}"));
        if wants_report && !tests.run.contains("{report}") {
            out.push(problem(
                kp!["spec", "tests", "run"],
                "tests.reports uses `{report}` but tests.run never writes it",
                "pass `{report}` to the test command, e.g. `--junitxml={report}`",
            ));
        }
        for (i, r) in tests.reports.iter().enumerate() {
            if let Err(e) = glob::Pattern::new(&r.replace("{report}", "report")) {
                out.push(problem(
                    kp!["spec", "tests", "reports", i],
                    format!("invalid report glob `{r}`: {e}"),
                    "write a glob such as `reports/*.xml`",
                ));
            }
        }
    } else if spec.steps.is_empty() {
        out.push(problem(
            kp!["spec"],
            "workflow has neither tests nor steps",
            "add `tests: {run: ...}` or at least one entry under `steps`",
        ));
    }

    // Refused until the artifacts store lands, rather than accepted and silently unused.
    if !spec.artifacts.is_empty() {
        out.push(problem(
            kp!["spec", "artifacts"],
            "artifacts: not supported yet (planned with the artifacts store)",
            "remove `artifacts` for now",
        ));
    }

    // `container` and `pod` are used by the kubernetes backend (the Pod's image and
    // settings) and ignored by the local one, so one workflow runs on a laptop and a cluster.

    // Tests from a git checkout: the runner checks `content.git` out into the shard's fresh
    // working directory before the first step (both backends).
    if let Some(content) = &spec.content {
        check_content(&mut out, content, spec.working_dir.is_some());
    }

    let par = &spec.parallel;
    if par.count == ShardCount::Fixed(0) {
        out.push(problem(
            kp!["spec", "parallel", "count"],
            "parallel.count must be at least 1, got 0",
            "set `count: 1` or more, or remove it to run one shard",
        ));
    }
    if par.max_count == Some(0) {
        out.push(problem(
            kp!["spec", "parallel", "maxCount"],
            "parallel.maxCount must be at least 1, got 0",
            "set `maxCount: 1` or more, or remove it",
        ));
    }
    if par.count == ShardCount::Auto && (par.max_count.is_none() || par.target_duration.is_none()) {
        out.push(problem(
            kp!["spec", "parallel", "count"],
            "`count: auto` needs `targetDuration` (the makespan to aim for) and `maxCount` (the most shards it may use)",
            "add e.g. `targetDuration: 5m` and `maxCount: 16`",
        ));
    }
    if let ShardCount::Fixed(count) = par.count
        && let Some(max) = par.max_count
        && max >= 1
        && max < count.max(1)
    {
        out.push(problem(
            kp!["spec", "parallel", "maxCount"],
            format!("parallel.maxCount ({max}) is less than parallel.count ({count})"),
            "raise maxCount or remove it",
        ));
    }
    let lists = spec.tests.as_ref().is_some_and(|t| t.list.is_some());
    if matches!(par.strategy, Some(Strategy::Queue | Strategy::Duration)) && !lists {
        out.push(problem(
            kp!["spec", "parallel", "strategy"],
            "parallel strategies `queue` and `duration` split the tests that `tests.list` prints, and this workflow has no tests.list",
            "add tests.list (one test id per line) or use `strategy: count`",
        ));
    }
    if let Some(matrix) = &par.matrix {
        matrix_problems(&mut out, matrix);
    }

    concurrency(&mut out, kp!["spec", "concurrency"], &spec.concurrency);

    if spec.timeout.is_some_and(|t| t.is_zero()) {
        out.push(problem(
            kp!["spec", "timeout"],
            "timeout must be longer than 0s",
            "remove it for no timeout or give a duration such as `20m`",
        ));
    }
    out
}

/// Matrix parameters: identifier keys, scalar values, at least one value each, and no more
/// combinations than [`crate::matrix_limit`].
fn matrix_problems(out: &mut Vec<Problem>, matrix: &BTreeMap<String, Vec<serde_norway::Value>>) {
    use serde_norway::Value;
    if matrix.is_empty() {
        out.push(problem(
            kp!["spec", "parallel", "matrix"],
            "parallel.matrix has no parameters",
            "add parameters such as `python: [\"3.11\", \"3.12\"]` or remove matrix",
        ));
        return;
    }
    let mut combinations: u128 = 1;
    for (key, values) in matrix {
        let at = kp!["spec", "parallel", "matrix", key.as_str()];
        let ident = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ident {
            out.push(problem(
                at.clone(),
                format!("invalid matrix parameter name `{key}`"),
                "use letters, digits, '_' and '-', starting with a letter or '_' (it becomes ASSAY_MATRIX_<NAME>)",
            ));
        }
        if values.is_empty() {
            out.push(problem(
                at.clone(),
                format!("matrix parameter `{key}` has no values"),
                "give it at least one value or remove it",
            ));
        }
        for (i, v) in values.iter().enumerate() {
            if !matches!(v, Value::String(_) | Value::Number(_) | Value::Bool(_)) {
                let mut at = at.clone();
                at.push(Seg::Index(i));
                out.push(problem(
                    at,
                    format!(
                        "matrix value {} of `{key}` is not a string, number or boolean",
                        i + 1
                    ),
                    "matrix values are scalars; give one combination per value",
                ));
            }
        }
        combinations = combinations.saturating_mul(values.len() as u128);
    }
    let limit = crate::matrix_limit();
    if combinations > limit as u128 {
        out.push(problem(
            kp!["spec", "parallel", "matrix"],
            format!(
                "parallel.matrix expands to {combinations} combinations, over the limit of {limit}"
            ),
            "drop parameter values, split the workflow, or raise the limit with ASSAY_MATRIX_LIMIT",
        ));
    }
}

fn step_problems(out: &mut Vec<Problem>, at: &[Seg], step: &Step) {
    let sub = |key: &str| {
        let mut p = at.to_vec();
        p.push(key.into());
        p
    };
    if step.name.trim().is_empty() {
        out.push(problem(
            sub("name"),
            "step name is empty",
            "give the step a short name such as `install`",
        ));
    }
    if step.run.trim().is_empty() {
        out.push(problem(
            sub("run"),
            format!("step `{}` has an empty run script", step.name),
            "give the shell command to run",
        ));
    }
    if step.timeout.is_some_and(|t| t.is_zero()) {
        out.push(problem(
            sub("timeout"),
            "step timeout must be longer than 0s",
            "remove it or give a duration such as `5m`",
        ));
    }
}

fn concurrency(out: &mut Vec<Problem>, at: Vec<Seg>, c: &Concurrency) {
    let sub = |key: &str| {
        let mut p = at.clone();
        p.push(key.into());
        p
    };
    match c.policy {
        Policy::Allow | Policy::Forbid | Policy::Replace | Policy::Queue => {}
    }
    if c.max == Some(0) {
        out.push(problem(
            sub("max"),
            "concurrency.max must be at least 1",
            "set `max: 1` or more, or remove it",
        ));
    }
    if let Some(p) = c.priority
        && !(-1000..=1000).contains(&p)
    {
        out.push(problem(
            sub("priority"),
            format!("concurrency.priority must be between -1000 and 1000, got {p}"),
            "higher runs first among queued executions; 0 is the default",
        ));
    }
}

pub(crate) fn trigger(spec: &TriggerSpec) -> Vec<Problem> {
    let mut out = Vec::new();
    let on = &spec.on;
    let named: Vec<&str> = [
        ("event", on.event.is_some()),
        ("cron", on.cron.is_some()),
        ("kubernetes", on.kubernetes.is_some()),
        ("webhook", on.webhook.is_some()),
    ]
    .into_iter()
    .filter_map(|(n, set)| set.then_some(n))
    .collect();
    match named.as_slice() {
        [] => out.push(problem(
            kp!["spec", "on"],
            "spec.on names nothing to react to",
            "add `event: {source: ..., type: ...}`, `webhook: {branches: [main]}` or `cron: {schedule: \"0 3 * * *\"}`",
        )),
        [_] => {}
        [first, second, ..] => out.push(problem(
            kp!["spec", "on", *second],
            format!("spec.on names both `{first}` and `{second}`"),
            "a trigger reacts to exactly one thing; split it into two triggers",
        )),
    }
    if let Some(k) = &on.kubernetes {
        out.extend(crate::kube_trigger::problems(k));
    }
    if let Some(w) = &on.webhook {
        webhook(&mut out, w);
    }
    if let Some(cron) = &on.cron {
        let tz = match cron.timezone.as_deref().map(parse_timezone).transpose() {
            Ok(tz) => tz.unwrap_or(chrono_tz::UTC),
            Err(e) => {
                out.push(problem(
                    kp!["spec", "on", "cron", "timezone"],
                    e,
                    "use an IANA time zone name such as `Europe/Berlin` or `UTC`",
                ));
                chrono_tz::UTC
            }
        };
        if let Err(e) = Schedule::new(&cron.schedule, tz) {
            out.push(problem(
                kp!["spec", "on", "cron", "schedule"],
                e,
                "write 5 fields (minute hour day-of-month month day-of-week) or 6 with seconds first, e.g. `0 3 * * *`",
            ));
        }
    }

    let run = &spec.run;
    match (&run.workflow, &run.selector) {
        (Some(_), Some(_)) => out.push(problem(
            kp!["spec", "run", "selector"],
            "spec.run names both `workflow` and `selector`",
            "keep exactly one: `workflow: NAME` or `selector: {label: value}`",
        )),
        (None, None) => out.push(problem(
            kp!["spec", "run"],
            "spec.run names neither `workflow` nor `selector`",
            "add `workflow: NAME` or `selector: {label: value}`",
        )),
        (Some(w), None) if !is_dns_label(w) => out.push(problem(
            kp!["spec", "run", "workflow"],
            format!("invalid workflow name `{w}`"),
            "workflow names are lowercase letters, digits and '-'",
        )),
        (None, Some(sel)) if sel.is_empty() => out.push(problem(
            kp!["spec", "run", "selector"],
            "spec.run.selector is empty",
            "add at least one label, e.g. `selector: {suite: e2e}`",
        )),
        _ => {}
    }
    if let Some(c) = &spec.concurrency {
        concurrency(&mut out, kp!["spec", "concurrency"], c);
        // The limit and its group belong to the workflow: a trigger's would be ignored.
        for (field, set) in [("group", c.group.is_some()), ("max", c.max.is_some())] {
            if set {
                out.push(problem(
                    kp!["spec", "concurrency", field],
                    format!(
                        "concurrency.{field} is the workflow's: a trigger may set only policy and priority"
                    ),
                    format!("move `{field}` to the TestWorkflow's `concurrency`"),
                ));
            }
        }
    }
    if spec.settle.is_some() {
        out.push(problem(
            kp!["spec", "settle"],
            "settle: not supported yet (comes with Kubernetes triggers, whose bursts it merges)",
            "remove `settle` for now",
        ));
    }
    out
}

fn webhook(out: &mut Vec<Problem>, w: &WebhookMatch) {
    if let Some(p) = &w.provider
        && !WEBHOOK_PROVIDERS.contains(&p.as_str())
    {
        let mut hint = format!("use one of {}", WEBHOOK_PROVIDERS.join(", "));
        if let Some(best) = did_you_mean(p, WEBHOOK_PROVIDERS.iter().copied()) {
            hint = format!("did you mean `{best}`? {hint}");
        }
        out.push(problem(
            kp!["spec", "on", "webhook", "provider"],
            format!("unknown webhook provider `{p}`"),
            hint,
        ));
    }
    for (i, e) in w.events.iter().enumerate() {
        if !WEBHOOK_EVENTS.contains(&e.as_str()) {
            let mut hint = format!("use {}", WEBHOOK_EVENTS.join(", "));
            if let Some(best) = did_you_mean(e, WEBHOOK_EVENTS.iter().copied()) {
                hint = format!("did you mean `{best}`? {hint}");
            }
            out.push(problem(
                kp!["spec", "on", "webhook", "events", i],
                format!("unknown webhook event `{e}`"),
                hint,
            ));
        }
    }
    for (key, patterns, example) in [
        ("repositories", &w.repositories, "`acme/*`"),
        ("branches", &w.branches, "`release/*`"),
        ("tags", &w.tags, "`v*`"),
        ("paths", &w.paths, "`src/**` or `!docs/**`"),
    ] {
        if let Err((i, e)) = GlobList::new(patterns) {
            out.push(problem(
                kp!["spec", "on", "webhook", key, i],
                format!("{key}[{i}]: {e}"),
                format!(
                    "write a glob such as {example}: `*` matches within a segment, `**` across segments, a leading `!` excludes"
                ),
            ));
        }
    }
}

/// Providers a webhook trigger can name.
const WEBHOOK_PROVIDERS: &[&str] = &["github", "gitlab", "generic"];

fn list(names: &[&str]) -> String {
    if names.is_empty() {
        "none".to_string()
    } else {
        names
            .iter()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `content`: a `git` with a url, relative paths inside the repository, a named Secret, and
/// no `workingDir` beside it (the checkout goes into a fresh directory of the shard's own).
fn check_content(out: &mut Vec<Problem>, content: &Content, has_working_dir: bool) {
    let Some(git) = &content.git else {
        out.push(problem(
            kp!["spec", "content"],
            "content: names no source",
            "add `git: {url: ...}` or remove `content`",
        ));
        return;
    };
    if git.url.trim().is_empty() {
        out.push(problem(
            kp!["spec", "content", "git", "url"],
            "content.git.url is empty",
            "set the clone url, e.g. `https://github.com/acme/shop.git`",
        ));
    }
    for (i, path) in git.paths.iter().enumerate() {
        let bad = path.trim().is_empty()
            || path.starts_with('/')
            || path
                .split('/')
                .any(|c| c == "." || c == ".." || c == ".git");
        if bad {
            out.push(problem(
                kp!["spec", "content", "git", "paths", i],
                format!("content.git.paths[{i}] {path:?} is not a path inside the repository"),
                "use a path relative to the repository root, without `..`, e.g. `tests/e2e`",
            ));
        }
    }
    if let Some(c) = &git.credentials
        && c.secret_name.trim().is_empty()
    {
        out.push(problem(
            kp!["spec", "content", "git", "credentials", "secretName"],
            "content.git.credentials.secretName is empty",
            "name the Secret holding `username` and `password`, or `ssh-privatekey`",
        ));
    }
    if has_working_dir {
        out.push(problem(
            kp!["spec", "workingDir"],
            "workingDir cannot be combined with content.git: the runner checks the repository out into a fresh directory of the shard's own and runs the steps there",
            "remove `workingDir`",
        ));
    }
}
