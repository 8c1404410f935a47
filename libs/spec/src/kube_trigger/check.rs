//! Checks on an `on.kubernetes` block, each naming the key path it is about.

use super::{
    BUILTIN_KINDS, BuiltinKind, FieldCondition, FieldPath, KubeEvent, KubernetesMatch, PathSeg,
    SelectorOperator,
};
use crate::did_you_mean;
use crate::filter::GlobList;
use crate::locate::{Seg, kp};
use crate::validate::{Problem, is_dns_label};

/// Everything wrong with an `on.kubernetes` block. A valid block loads; the
/// trigger-watcher acts on it when started with `--watch-cluster` (and warns, naming the
/// flag, when it is not).
pub(crate) fn problems(k: &KubernetesMatch) -> Vec<Problem> {
    let mut out = Vec::new();
    let at = |rest: Vec<Seg>| {
        let mut p = kp!["spec", "on", "kubernetes"];
        p.extend(rest);
        p
    };
    let push = |out: &mut Vec<Problem>, path: Vec<Seg>, msg: String, hint: String| {
        out.push(Problem {
            path,
            message: msg,
            hint: Some(hint),
        })
    };
    match k.resource() {
        Ok(r) => {
            if !r.supports(k.event) {
                let who = match k.event {
                    KubeEvent::RolloutComplete => kinds_where(|b| b.rollout),
                    KubeEvent::Scaled => kinds_where(|b| b.replicas),
                    _ => kinds_where(|b| b.containers),
                };
                push(
                    &mut out,
                    at(kp!["event"]),
                    format!("event `{}` does not happen to a {}", k.event, r.kind),
                    format!(
                        "`{}` is for {who}{}; use `modified` with a condition for other kinds",
                        k.event,
                        if k.event == KubeEvent::RolloutComplete {
                            ""
                        } else {
                            " and custom resources"
                        }
                    ),
                );
            }
            if r.builtin.is_some_and(|b| b.metadata_only) {
                for (i, c) in k.conditions.iter().enumerate() {
                    let data = ["data", "stringData", "binaryData"].iter().any(|f| {
                        FieldPath::parse(&c.path)
                            .is_ok_and(|p| p.0.first() == Some(&PathSeg::Key(f.to_string())))
                    });
                    if data {
                        push(
                            &mut out,
                            at(kp!["conditions", i, "path"]),
                            format!(
                                "{} objects are watched as metadata only: `{}` is never seen",
                                r.kind, c.path
                            ),
                            "put conditions on `.metadata` (labels, annotations) instead".into(),
                        );
                    }
                }
            }
        }
        Err(e) => {
            let mut hint =
                "name a built-in kind, or give a custom resource's `group` and `version`"
                    .to_string();
            if let Some(best) = did_you_mean(&k.kind, BUILTIN_KINDS.iter().map(|b| b.kind))
                && best != k.kind
            {
                hint = format!("did you mean `{best}`? or {hint}");
            }
            push(&mut out, at(kp!["kind"]), e, hint);
        }
    }
    if !is_kind(&k.kind) {
        push(
            &mut out,
            at(kp!["kind"]),
            format!("invalid kind `{}`", k.kind),
            "kinds are CamelCase letters and digits, e.g. `Deployment`".into(),
        );
    }
    if let Some(g) = &k.group
        && !g.is_empty()
        && !g.split('.').all(is_dns_label)
    {
        push(
            &mut out,
            at(kp!["group"]),
            format!("invalid API group `{g}`"),
            "write the group as in the CRD, e.g. `example.com` (empty for the core group)".into(),
        );
    }
    if let Some(v) = &k.version
        && !is_version(v)
    {
        push(
            &mut out,
            at(kp!["version"]),
            format!("invalid API version `{v}`"),
            "write a version such as `v1`, `v1beta1` or `v2alpha3`".into(),
        );
    }
    if k.namespace.is_some() && !k.namespaces.is_empty() {
        push(
            &mut out,
            at(kp!["namespaces"]),
            "`namespace` and `namespaces` are both set".into(),
            "keep one: `namespace: NAME` or `namespaces: [a, b]`".into(),
        );
    }
    let named = k.namespace.iter().map(|n| (at(kp!["namespace"]), n));
    let listed = (k.namespaces.iter().enumerate()).map(|(i, n)| (at(kp!["namespaces", i]), n));
    for (path, ns) in named.chain(listed) {
        if !is_dns_label(ns) {
            push(
                &mut out,
                path,
                format!("invalid namespace `{ns}`"),
                "namespaces are lowercase letters, digits and '-'; leave it out for every namespace".into(),
            );
        }
    }
    if let Some(name) = &k.name
        && let Err((_, e)) = GlobList::new(std::slice::from_ref(name))
    {
        push(
            &mut out,
            at(kp!["name"]),
            format!("name: {e}"),
            "give an object name or a glob such as `payments-*`".into(),
        );
    }
    for (key, value) in &k.selector {
        if let Err(e) = label_key(key).and_then(|()| label_value(value)) {
            push(
                &mut out,
                at(kp!["selector", key.as_str()]),
                format!("invalid selector {key}: {e}"),
                "label selectors are `key: value` with Kubernetes label keys and values".into(),
            );
        }
    }
    for (i, r) in k.match_expressions.iter().enumerate() {
        let here = |rest: &str| at(kp!["matchExpressions", i, rest]);
        if let Err(e) = label_key(&r.key) {
            push(
                &mut out,
                here("key"),
                format!("invalid label key `{}`: {e}", r.key),
                "write a label key such as `app` or `app.kubernetes.io/name`".into(),
            );
        }
        let wants_values = matches!(r.operator, SelectorOperator::In | SelectorOperator::NotIn);
        if wants_values && r.values.is_empty() {
            push(
                &mut out,
                here("operator"),
                format!("operator {:?} needs at least one value", r.operator),
                "add `values: [a, b]`".into(),
            );
        }
        if !wants_values && !r.values.is_empty() {
            push(
                &mut out,
                here("values"),
                format!("operator {:?} takes no values", r.operator),
                "remove `values`, or use `In` / `NotIn`".into(),
            );
        }
        for (j, v) in r.values.iter().enumerate() {
            if let Err(e) = label_value(v) {
                push(
                    &mut out,
                    at(kp!["matchExpressions", i, "values", j]),
                    format!("invalid label value `{v}`: {e}"),
                    "label values are at most 63 letters, digits, '-', '_' and '.'".into(),
                );
            }
        }
    }
    for (i, c) in k.conditions.iter().enumerate() {
        if let Err(e) = FieldPath::parse(&c.path) {
            push(
                &mut out,
                at(kp!["conditions", i, "path"]),
                e,
                "write a JSON path such as `.spec.replicas` or `.metadata.labels[\"app.kubernetes.io/version\"]`".into(),
            );
        }
        let ops = c.operators();
        if ops.len() != 1 {
            push(
                &mut out,
                at(kp!["conditions", i]),
                if ops.is_empty() {
                    format!("condition on `{}` names no operator", c.path)
                } else {
                    format!("condition on `{}` names {}", c.path, ops.join(" and "))
                },
                "give exactly one of `equals`, `changed`, `changedTo`, `changedFrom`; add a condition per operator".into(),
            );
        }
    }
    out
}

/// A kind: an ASCII letter first, then letters and digits.
fn is_kind(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// `v1`, `v1beta1`, `v2alpha3`.
fn is_version(s: &str) -> bool {
    let Some(rest) = s.strip_prefix('v') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let (major, tail) = rest.split_at(digits);
    let tail_ok = tail.is_empty()
        || ["alpha", "beta"].iter().any(|stage| {
            tail.strip_prefix(stage)
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        });
    !major.is_empty() && !major.starts_with('0') && tail_ok
}

/// A label value: at most 63 characters, alphanumerics with `-`, `_`, `.` inside; may be empty.
fn label_value(v: &str) -> Result<(), String> {
    let inner_ok = v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = v.is_empty()
        || (v.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && v.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric()));
    if v.len() > 63 {
        Err(format!("value is {} characters long, at most 63", v.len()))
    } else if !inner_ok || !ends_ok {
        Err(format!(
            "value `{v}` must be letters, digits, '-', '_' and '.', starting and ending with a letter or digit"
        ))
    } else {
        Ok(())
    }
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name like a label value
/// but not empty.
fn label_key(k: &str) -> Result<(), String> {
    let (prefix, name) = match k.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, k),
    };
    if let Some(p) = prefix
        && (p.len() > 253 || !p.split('.').all(is_dns_label))
    {
        return Err(format!("prefix `{p}` is not a DNS subdomain"));
    }
    if name.is_empty() {
        return Err("the name part is empty".to_string());
    }
    label_value(name).map_err(|e| e.replace("value", "name"))
}

fn kinds_where(f: impl Fn(&BuiltinKind) -> bool) -> String {
    let kinds: Vec<&str> = BUILTIN_KINDS
        .iter()
        .filter(|b| f(b))
        .map(|b| b.kind)
        .collect();
    match kinds.as_slice() {
        [.., last] if kinds.len() > 1 => {
            format!("{} and {last}", kinds[..kinds.len() - 1].join(", "))
        }
        _ => kinds.join(""),
    }
}

impl FieldCondition {
    fn operators(&self) -> Vec<&'static str> {
        [
            ("equals", self.equals.is_some()),
            ("changed", self.changed.is_some()),
            ("changedTo", self.changed_to.is_some()),
            ("changedFrom", self.changed_from.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, set)| set.then_some(n))
        .collect()
    }
}
