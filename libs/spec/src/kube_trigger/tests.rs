//! Tests of `on.kubernetes`: parsing, validation with locations, conditions, matching.

use std::collections::BTreeMap;
use std::path::Path;

use std::time::Duration;

use super::*;
use crate::trigger::EventView;
use crate::{Error, parse_str};

fn doc(kubernetes: &str) -> String {
    format!(
        "apiVersion: assay.dev/v1alpha1\nkind: TestTrigger\nmetadata: {{name: t}}\nspec:\n  on:\n    kubernetes:\n{kubernetes}  run: {{workflow: w}}\n"
    )
}

/// The diagnostics for a trigger whose `on.kubernetes` block is `body` (indented 6).
fn diagnostics(body: &str) -> Vec<String> {
    match parse_str(Path::new("k.yaml"), &doc(body)) {
        Ok(defs) => panic!("accepted: {defs:?}"),
        Err(Error::Invalid(d)) => d.iter().map(ToString::to_string).collect(),
        Err(e) => panic!("{e}"),
    }
}

fn parse(yaml: &str) -> KubernetesMatch {
    serde_norway::from_str(yaml).unwrap()
}

#[test]
fn a_valid_trigger_loads() {
    let defs = parse_str(
        Path::new("k.yaml"),
        &doc("      kind: Deployment\n      namespace: shop\n      selector: {app: payments}\n      event: rollout-complete\n      settle: 10s\n      supersede: true\n"),
    )
    .unwrap();
    assert_eq!(defs.len(), 1, "{defs:?}");
}

#[test]
fn the_design_example_parses_into_the_model() {
    let k = parse(
        "{kind: Deployment, namespace: shop, selector: {app: payments}, event: rollout-complete}",
    );
    assert_eq!(k.event, KubeEvent::RolloutComplete);
    assert_eq!(k.selector.get("app").map(String::as_str), Some("payments"));
    let r = k.resource().unwrap();
    assert_eq!(r.api_version(), "apps/v1");
    assert!(r.builtin.is_some());
    assert_eq!(k.settle(), Duration::ZERO);
    let full = parse(
        "{kind: Pod, namespaces: [a, b], name: 'web-*', matchExpressions: [{key: tier, operator: NotIn, values: [db]}], event: image-changed, conditions: [{path: .spec.replicas, equals: 3}, {path: .x, changed: true}, {path: .y, changedTo: on}, {path: .z, changedFrom: false}], settle: 1m30s, supersede: true}",
    );
    assert_eq!(full.conditions[0].equals.as_deref(), Some("3"));
    assert_eq!(full.conditions[3].changed_from.as_deref(), Some("false"));
    assert_eq!(full.settle(), Duration::from_secs(90));
    assert!(full.supersede);
    assert_eq!(full.match_expressions[0].operator, SelectorOperator::NotIn);
}

/// Each bad input: the body of `on.kubernetes`, the diagnostic expected (prefix, with its
/// location) and hint.
#[test]
fn bad_inputs_name_their_location_and_fix() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "      kind: Deploymnet\n      event: modified\n",
            "k.yaml:7:7: unknown kind `Deploymnet` (known: ConfigMap, DaemonSet, Deployment, Job, Pod, Secret, Service, StatefulSet)",
            "did you mean `Deployment`?",
        ),
        (
            "      kind: Widget\n      group: example.com\n      event: modified\n",
            "k.yaml:7:7: kind `Widget` names a group without a version",
            "",
        ),
        (
            "      kind: Widget\n      group: example.com\n      version: one\n      event: modified\n",
            "k.yaml:9:7: invalid API version `one`",
            "v1beta1",
        ),
        (
            "      kind: Service\n      event: rollout-complete\n",
            "k.yaml:8:7: event `rollout-complete` does not happen to a Service",
            "Deployment, StatefulSet and DaemonSet",
        ),
        (
            "      kind: Widget\n      group: example.com\n      version: v1\n      event: rollout-complete\n",
            "k.yaml:10:7: event `rollout-complete` does not happen to a Widget",
            "",
        ),
        (
            "      kind: DaemonSet\n      event: scaled\n",
            "k.yaml:8:7: event `scaled` does not happen to a DaemonSet",
            "Deployment and StatefulSet",
        ),
        (
            "      kind: ConfigMap\n      event: image-changed\n",
            "k.yaml:8:7: event `image-changed` does not happen to a ConfigMap",
            "",
        ),
        (
            "      kind: Pod\n      event: modified\n      matchExpressions:\n        - {key: tier, operator: In}\n",
            "k.yaml:10:23: operator In needs at least one value",
            "values: [a, b]",
        ),
        (
            "      kind: Pod\n      event: modified\n      matchExpressions:\n        - key: tier\n          operator: Exists\n          values: [x]\n",
            "k.yaml:12:11: operator Exists takes no values",
            "",
        ),
        (
            "      kind: Pod\n      event: modified\n      matchExpressions:\n        - {key: 'bad key', operator: Exists}\n",
            "k.yaml:10:12: invalid label key `bad key`",
            "",
        ),
        (
            "      kind: Pod\n      event: modified\n      selector: {app: 'no way'}\n",
            "k.yaml:9:18: invalid selector app",
            "",
        ),
        (
            "      kind: Pod\n      event: modified\n      conditions:\n        - path: spec.replicas\n          equals: 3\n",
            "k.yaml:10:11: invalid path `spec.replicas`: a path starts with `.`",
            "",
        ),
        (
            "      kind: Pod\n      event: modified\n      conditions:\n        - {path: '.a[x]', equals: 3}\n",
            "k.yaml:10:12: invalid path `.a[x]`: `[x]` is neither an index nor a quoted key",
            "",
        ),
        (
            "      kind: Pod\n      event: modified\n      conditions:\n        - {path: .a, equals: 3, changed: true}\n",
            "k.yaml:10:9: condition on `.a` names equals and changed",
            "exactly one",
        ),
        (
            "      kind: Secret\n      event: modified\n      conditions:\n        - {path: .data.token, changed: true}\n",
            "k.yaml:10:12: Secret objects are watched as metadata only",
            "",
        ),
        (
            "      kind: Pod\n      event: modified\n      namespace: Shop\n",
            "k.yaml:9:7: invalid namespace `Shop`",
            "",
        ),
        (
            "      kind: Pod\n      event: modified\n      namespace: a\n      namespaces: [b]\n",
            "k.yaml:10:7: `namespace` and `namespaces` are both set",
            "",
        ),
        (
            "      kind: Pod\n      event: modified\n      name: 'a/**b'\n",
            "k.yaml:9:7: name: invalid glob",
            "",
        ),
    ];
    for (body, want, hint) in cases {
        let d = diagnostics(body);
        let found = d.iter().find(|l| l.starts_with(want));
        assert!(found.is_some(), "want {want:?} in {d:#?}\n{body}");
        assert!(
            found.is_some_and(|l| l.contains(hint)),
            "hint {hint:?}: {d:#?}"
        );
    }
}

#[test]
fn serde_refuses_unknown_events_fields_and_operators_with_locations() {
    for (body, want) in [
        (
            "      kind: Pod\n      event: rollout\n",
            "k.yaml:8:14: unknown value `rollout` for `spec.on.kubernetes.event`; did you mean `rollout-complete`?",
        ),
        (
            "      kind: Pod\n      event: modified\n      labels: {a: b}\n",
            "k.yaml:9:7: unknown field `labels`",
        ),
        (
            "      kind: Pod\n      event: modified\n      matchExpressions: [{key: a, operator: Has}]\n",
            "k.yaml:9:45: unknown value `Has` for `spec.on.kubernetes.matchExpressions[0].operator`; use one of: In, NotIn, Exists, DoesNotExist",
        ),
    ] {
        let d = diagnostics(body);
        assert!(
            d.iter().any(|l| l.contains(want)),
            "want {want:?} in {d:#?}"
        );
    }
}

#[test]
fn paths_parse_and_print_canonically() {
    for (text, canonical) in [
        (".spec.replicas", ".spec.replicas"),
        (
            ".spec.template.spec.containers[0].image",
            ".spec.template.spec.containers[0].image",
        ),
        (
            ".metadata.labels[\"app.kubernetes.io/name\"]",
            ".metadata.labels[\"app.kubernetes.io/name\"]",
        ),
        (".metadata.labels['app']", ".metadata.labels.app"),
    ] {
        let p = FieldPath::parse(text).unwrap();
        assert_eq!(p.to_string(), canonical);
        assert_eq!(FieldPath::parse(canonical).unwrap(), p);
    }
    for bad in [
        "", ".", "spec", ".a..b", ".a[", ".a[-1]", ".a[\"\"]", ".a]b",
    ] {
        assert!(FieldPath::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn conditions_compare_old_and_new_values() {
    let c = |yaml: &str| -> FieldCondition { serde_norway::from_str(yaml).unwrap() };
    // (condition, old, new, holds)
    let rows: &[(&str, Option<&str>, Option<&str>, bool)] = &[
        ("{path: .a, equals: 3}", None, Some("3"), true),
        ("{path: .a, equals: 3}", Some("3"), Some("4"), false),
        ("{path: .a, equals: 3}", Some("3"), None, false),
        ("{path: .a, changed: true}", Some("1"), Some("2"), true),
        ("{path: .a, changed: true}", Some("1"), Some("1"), false),
        ("{path: .a, changed: true}", None, Some("1"), true),
        ("{path: .a, changed: true}", None, None, false),
        ("{path: .a, changed: false}", Some("1"), Some("1"), true),
        ("{path: .a, changed: false}", Some("1"), None, false),
        ("{path: .a, changedTo: v2}", Some("v1"), Some("v2"), true),
        ("{path: .a, changedTo: v2}", Some("v2"), Some("v2"), false),
        ("{path: .a, changedTo: v2}", None, Some("v2"), true),
        ("{path: .a, changedTo: v2}", Some("v1"), Some("v3"), false),
        ("{path: .a, changedFrom: v1}", Some("v1"), Some("v2"), true),
        ("{path: .a, changedFrom: v1}", Some("v1"), None, true),
        ("{path: .a, changedFrom: v1}", Some("v1"), Some("v1"), false),
        ("{path: .a, changedFrom: v1}", None, Some("v2"), false),
    ];
    for (cond, old, new, holds) in rows {
        let got = c(cond).check(*old, *new);
        assert_eq!(got.is_ok(), *holds, "{cond} {old:?} -> {new:?}: {got:?}");
    }
    assert_eq!(
        c("{path: .spec.replicas, equals: 3}").check(None, None),
        Err(".spec.replicas: missing is not \"3\"".into())
    );
}

#[test]
fn label_requirements() {
    let r = |op: SelectorOperator, values: &[&str]| LabelRequirement {
        key: "tier".into(),
        operator: op,
        values: values.iter().map(|v| v.to_string()).collect(),
    };
    use SelectorOperator::*;
    assert!(r(In, &["a", "b"]).holds(Some("b")));
    assert!(!r(In, &["a"]).holds(Some("c")));
    assert!(!r(In, &["a"]).holds(None));
    assert!(r(NotIn, &["a"]).holds(Some("c")));
    assert!(r(NotIn, &["a"]).holds(None));
    assert!(!r(NotIn, &["a"]).holds(Some("a")));
    assert!(r(Exists, &[]).holds(Some("")));
    assert!(!r(Exists, &[]).holds(None));
    assert!(r(DoesNotExist, &[]).holds(None));
    assert!(!r(DoesNotExist, &[]).holds(Some("x")));
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn view<'a>(ty: &'a str, labels: &'a BTreeMap<String, String>) -> EventView<'a> {
    EventView {
        source: KUBERNETES_SOURCE,
        r#type: ty,
        labels,
        changed_paths: None,
    }
}

#[test]
fn explain_checks_object_selector_and_conditions_in_order() {
    let k = parse(
        "{kind: Deployment, namespaces: [shop, staging], name: 'pay*', selector: {app: payments}, matchExpressions: [{key: tier, operator: In, values: [web]}], event: rollout-complete, conditions: [{path: '.metadata.labels[\"app.kubernetes.io/version\"]', changedTo: v2}]}",
    );
    let good = [
        ("kind", "Deployment"),
        ("apiVersion", "apps/v1"),
        ("namespace", "shop"),
        ("name", "payments"),
        ("label.app", "payments"),
        ("label.tier", "web"),
        (
            "field:.metadata.labels[\"app.kubernetes.io/version\"]",
            "v2",
        ),
        (
            "previous:.metadata.labels[\"app.kubernetes.io/version\"]",
            "v1",
        ),
    ];
    let with = |k: &str, v: Option<&str>| {
        let mut l = labels(&good);
        match v {
            Some(v) => l.insert(k.to_string(), v.to_string()),
            None => l.remove(k),
        };
        l
    };
    assert_eq!(k.explain(&view("rollout-complete", &labels(&good))), Ok(()));
    let rows: Vec<(BTreeMap<String, String>, &str, &str)> = vec![
        (
            labels(&good),
            "modified",
            "type \"modified\" is not \"rollout-complete\"",
        ),
        (
            with("kind", Some("StatefulSet")),
            "rollout-complete",
            "object apps/v1 StatefulSet is not apps/v1 Deployment",
        ),
        (
            with("apiVersion", Some("example.com/v1")),
            "rollout-complete",
            "object example.com/v1 Deployment is not",
        ),
        (
            with("namespace", Some("prod")),
            "rollout-complete",
            "namespace \"prod\" is not one of [shop, staging]",
        ),
        (
            with("namespace", None),
            "rollout-complete",
            "namespace (none)",
        ),
        (
            with("name", Some("orders")),
            "rollout-complete",
            "name \"orders\" does not match \"pay*\"",
        ),
        (
            with("label.app", Some("orders")),
            "rollout-complete",
            "selector app: \"orders\" is not \"payments\"",
        ),
        (
            with("label.app", None),
            "rollout-complete",
            "selector app: the object has no such label",
        ),
        (
            with("label.tier", Some("db")),
            "rollout-complete",
            "matchExpressions tier In [web]",
        ),
        (
            with(
                "previous:.metadata.labels[\"app.kubernetes.io/version\"]",
                Some("v2"),
            ),
            "rollout-complete",
            "did not change to \"v2\"",
        ),
    ];
    for (l, ty, want) in rows {
        let why = k.explain(&view(ty, &l)).unwrap_err();
        assert!(why.contains(want), "{why:?} should say {want:?}");
    }
    let all = labels(&good);
    let other = EventView {
        source: "github",
        ..view("rollout-complete", &all)
    };
    assert_eq!(
        k.explain(&other).unwrap_err(),
        "not a kubernetes event (source \"github\")"
    );
}

#[test]
fn custom_resources_and_builtin_groups() {
    let cr = parse("{kind: Rollout, group: argoproj.io, version: v1alpha1, event: image-changed}");
    let r = cr.resource().unwrap();
    assert_eq!(r.api_version(), "argoproj.io/v1alpha1");
    assert!(r.builtin.is_none() && r.supports(KubeEvent::ImageChanged));
    assert!(!r.supports(KubeEvent::RolloutComplete));
    let explicit = parse("{kind: Deployment, group: apps, version: v1, event: scaled}");
    assert!(explicit.resource().unwrap().builtin.is_some());
    let core = parse("{kind: ConfigMap, event: modified}")
        .resource()
        .unwrap();
    assert_eq!(core.api_version(), "v1");
    let l = labels(&[("kind", "Rollout"), ("apiVersion", "argoproj.io/v1alpha1")]);
    assert_eq!(cr.explain(&view("image-changed", &l)), Ok(()));
}

#[test]
fn the_model_has_a_json_schema_for_the_crd() {
    let schema = schemars::schema_for!(KubernetesMatch);
    let text = serde_norway::to_string(&schema).unwrap();
    for key in [
        "matchExpressions",
        "rollout-complete",
        "DoesNotExist",
        "changedTo",
        "settle",
        "supersede",
    ] {
        assert!(text.contains(key), "{key} missing from the schema:\n{text}");
    }
}
