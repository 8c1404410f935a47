//! Which `TestWorkflow` and `TestTrigger` objects make the catalog, and why the others do
//! not (pure: no I/O).
//!
//! Each object is decoded into its typed resource and turned into a definition by
//! `to_definition`, the validation files get; the valid ones go through
//! [`Catalog::from_definitions_lenient`], oldest first, so that of two objects with one name
//! (in two namespaces) the later one is refused, as is a trigger that runs an undefined
//! workflow. A problem leaves out only the object it is about.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use assay_spec::crd::CONDITION_VALID;
use assay_spec::{Catalog, Definition, Refusal, TestTrigger, TestWorkflow};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{ApiResource, DynamicObject};

/// The two kinds the catalog reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Workflow,
    Trigger,
}

impl Kind {
    /// `TestWorkflow` / `TestTrigger`.
    pub fn kind(self) -> &'static str {
        match self {
            Kind::Workflow => assay_spec::KIND_WORKFLOW,
            Kind::Trigger => assay_spec::KIND_TRIGGER,
        }
    }

    /// `testworkflows.assay.dev` / `testtriggers.assay.dev`, as RBAC and kubectl name them.
    pub fn resource(self) -> &'static str {
        match self {
            Kind::Workflow => "testworkflows.assay.dev",
            Kind::Trigger => "testtriggers.assay.dev",
        }
    }

    /// The API resource, for dynamic (untyped) API calls.
    pub fn api_resource(self) -> ApiResource {
        match self {
            Kind::Workflow => ApiResource::erase::<TestWorkflow>(&()),
            Kind::Trigger => ApiResource::erase::<TestTrigger>(&()),
        }
    }
}

/// One object: its kind, namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjKey {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.kind(), self.namespace, self.name)
    }
}

/// Why an object is not in the catalog: the `Valid` condition's reason and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `Invalid` (its spec fails validation), `DuplicateName` (an older object has its name)
    /// or `UnresolvedReference` (a trigger runs an undefined workflow or parameter).
    pub reason: &'static str,
    pub message: String,
}

/// What became of the objects: the catalog of the valid ones, each object's problem if it
/// has one, and which object each accepted workflow came from.
pub struct Judgement {
    pub catalog: Catalog,
    pub verdicts: BTreeMap<ObjKey, Option<Problem>>,
    pub workflows: HashMap<String, ObjKey>,
    /// Which object each accepted trigger came from.
    pub triggers: HashMap<String, ObjKey>,
}

/// Judges every object; `label` names where they come from in "not found in …" messages
/// (`namespace shop`, `all namespaces`).
pub fn judge<'a>(
    objects: impl IntoIterator<Item = (ObjKey, &'a DynamicObject)>,
    label: &str,
) -> Judgement {
    let mut objects: Vec<(ObjKey, &DynamicObject)> = objects.into_iter().collect();
    // Oldest first: the object that had a name first keeps it.
    objects.sort_by(|a, b| {
        let created = |o: &DynamicObject| o.metadata.creation_timestamp.clone();
        (created(a.1).is_none(), created(a.1), &a.0).cmp(&(
            created(b.1).is_none(),
            created(b.1),
            &b.0,
        ))
    });
    let mut verdicts = BTreeMap::new();
    let mut by_source: HashMap<PathBuf, ObjKey> = HashMap::new();
    let mut defs = Vec::new();
    for (key, obj) in objects {
        match definition(key.kind, obj) {
            Ok(def) => {
                by_source.insert(def.source().file.clone(), key.clone());
                defs.push(def);
                verdicts.insert(key, None);
            }
            Err(message) => {
                verdicts.insert(
                    key,
                    Some(Problem {
                        reason: "Invalid",
                        message,
                    }),
                );
            }
        }
    }
    let (catalog, refused) = Catalog::from_definitions_lenient(PathBuf::from(label), defs);
    for r in refused {
        if let Some(key) = by_source.get(&r.definition.source().file) {
            let reason = match r.refusal {
                Refusal::Duplicate => "DuplicateName",
                Refusal::Reference => "UnresolvedReference",
            };
            verdicts.insert(
                key.clone(),
                Some(Problem {
                    reason,
                    message: r.problem.to_string(),
                }),
            );
        }
    }
    let workflows = catalog
        .workflows()
        .filter_map(|w| Some((w.name.clone(), by_source.get(&w.source.file)?.clone())))
        .collect();
    let triggers = catalog
        .triggers()
        .filter_map(|t| Some((t.name.clone(), by_source.get(&t.source.file)?.clone())))
        .collect();
    Judgement {
        catalog,
        verdicts,
        workflows,
        triggers,
    }
}

/// The object as a definition, validated as a file is, or every problem as one message.
fn definition(kind: Kind, obj: &DynamicObject) -> Result<Definition, String> {
    let value = serde_json::to_value(obj).map_err(|e| e.to_string())?;
    let decoded = match kind {
        Kind::Workflow => serde_json::from_value::<TestWorkflow>(value).map(|r| r.to_definition()),
        Kind::Trigger => serde_json::from_value::<TestTrigger>(value).map(|r| r.to_definition()),
    };
    match decoded {
        Ok(Ok(def)) => Ok(def),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => {
            // kubectl reads YAML 1.1, where an unquoted `on` key is the boolean true: the
            // object reaches the API with `true:` in place of `on:`.
            let hint = if e.to_string().starts_with("unknown field `true`") {
                "; `on` arrived as `true`: kubectl (YAML 1.1) reads an unquoted `on:` key as a boolean, write it as \"on\":"
            } else {
                ""
            };
            Err(format!(
                "{} {}/{}: spec does not match the {} schema: {e}{hint}",
                kind.kind(),
                obj.metadata.namespace.as_deref().unwrap_or_default(),
                obj.metadata.name.as_deref().unwrap_or_default(),
                kind.kind()
            ))
        }
    }
}

/// The object's `status.conditions` as they are in the cluster.
pub fn conditions(obj: &DynamicObject) -> Vec<Condition> {
    obj.data
        .pointer("/status/conditions")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default()
}

/// The `Valid` condition for `problem` (`True`, reason `Validated`, when there is none),
/// keeping the transition time of `current` when its status is the same.
pub fn valid_condition(
    problem: Option<&Problem>,
    generation: Option<i64>,
    current: Option<&Condition>,
    now: Time,
) -> Condition {
    let (status, reason, message) = match problem {
        None => ("True", "Validated", String::new()),
        Some(p) => ("False", p.reason, p.message.clone()),
    };
    let last_transition_time = match current {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => now,
    };
    Condition {
        type_: CONDITION_VALID.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time,
        observed_generation: generation,
    }
}

/// Whether two conditions say the same (ignoring the transition time).
pub fn same(a: &Condition, b: &Condition) -> bool {
    a.type_ == b.type_
        && a.status == b.status
        && a.reason == b.reason
        && a.message == b.message
        && a.observed_generation == b.observed_generation
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn object(kind: Kind, ns: &str, name: &str, created: i64, spec: Value) -> DynamicObject {
        let ar = kind.api_resource();
        let mut obj = DynamicObject::new(name, &ar).within(ns);
        obj.metadata.creation_timestamp = Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap_or_default(),
        ));
        obj.data = serde_json::json!({ "spec": spec });
        obj
    }

    fn key(kind: Kind, ns: &str, name: &str) -> ObjKey {
        ObjKey {
            kind,
            namespace: ns.into(),
            name: name.into(),
        }
    }

    fn workflow_spec(cmd: &str) -> Value {
        json!({"steps": [{"name": "test", "run": cmd}]})
    }

    #[test]
    fn valid_invalid_duplicate_and_unresolved_are_told_apart() {
        let objs = [
            (
                key(Kind::Workflow, "a", "e2e"),
                object(Kind::Workflow, "a", "e2e", 10, workflow_spec("true")),
            ),
            // Newer, same name in another namespace: refused.
            (
                key(Kind::Workflow, "b", "e2e"),
                object(Kind::Workflow, "b", "e2e", 20, workflow_spec("true")),
            ),
            // A field the schema does not know.
            (
                key(Kind::Workflow, "a", "bad"),
                object(Kind::Workflow, "a", "bad", 5, json!({"stepz": []})),
            ),
            // Fails validation (a step without a command).
            (
                key(Kind::Workflow, "a", "empty"),
                object(
                    Kind::Workflow,
                    "a",
                    "empty",
                    5,
                    json!({"steps": [{"name": "x"}]}),
                ),
            ),
            (
                key(Kind::Trigger, "a", "t"),
                object(
                    Kind::Trigger,
                    "a",
                    "t",
                    1,
                    json!({"on": {"cron": {"schedule": "0 * * * *"}}, "run": {"workflow": "nope"}}),
                ),
            ),
        ];
        let j = judge(objs.iter().map(|(k, o)| (k.clone(), o)), "all namespaces");
        let names: Vec<&str> = j.catalog.workflows().map(|w| w.name.as_str()).collect();
        assert_eq!(names, ["e2e"]);
        assert_eq!(j.workflows["e2e"], key(Kind::Workflow, "a", "e2e"));
        assert_eq!(j.verdicts[&key(Kind::Workflow, "a", "e2e")], None);
        let dup = j.verdicts[&key(Kind::Workflow, "b", "e2e")]
            .clone()
            .unwrap();
        assert_eq!(dup.reason, "DuplicateName");
        assert!(
            dup.message.contains("TestWorkflow a/e2e")
                && dup.message.contains("TestWorkflow b/e2e"),
            "{}",
            dup.message
        );
        let bad = j.verdicts[&key(Kind::Workflow, "a", "bad")]
            .clone()
            .unwrap();
        assert_eq!(bad.reason, "Invalid");
        assert!(bad.message.contains("stepz"), "{}", bad.message);
        let empty = j.verdicts[&key(Kind::Workflow, "a", "empty")]
            .clone()
            .unwrap();
        assert_eq!(empty.reason, "Invalid");
        assert!(
            empty.message.contains("TestWorkflow a/empty"),
            "{}",
            empty.message
        );
        let t = j.verdicts[&key(Kind::Trigger, "a", "t")].clone().unwrap();
        assert_eq!(t.reason, "UnresolvedReference");
        assert!(t.message.contains("\"nope\""), "{}", t.message);
        assert_eq!(j.catalog.triggers().count(), 0);
        let err = j.catalog.workflow("nope").unwrap_err().to_string();
        assert!(err.contains("not found in all namespaces"), "{err}");
    }

    #[test]
    fn an_on_key_turned_true_by_yaml_1_1_is_named_with_the_fix() {
        let obj = object(
            Kind::Trigger,
            "ci",
            "t",
            1,
            json!({"true": {"cron": {"schedule": "* * * * *"}}, "run": {"workflow": "w"}}),
        );
        let e = definition(Kind::Trigger, &obj).unwrap_err();
        assert!(e.contains("unknown field `true`"), "{e}");
        assert!(e.ends_with("write it as \"on\":"), "{e}");
    }

    #[test]
    fn the_older_object_keeps_its_name_whatever_the_order_given() {
        let older = object(Kind::Workflow, "z", "e2e", 1, workflow_spec("old"));
        let newer = object(Kind::Workflow, "a", "e2e", 2, workflow_spec("new"));
        for order in [
            [(&older, "z"), (&newer, "a")],
            [(&newer, "a"), (&older, "z")],
        ] {
            let j = judge(
                order
                    .iter()
                    .map(|(o, ns)| (key(Kind::Workflow, ns, "e2e"), *o)),
                "x",
            );
            assert_eq!(j.workflows["e2e"].namespace, "z");
        }
    }

    #[test]
    fn the_transition_time_stays_while_the_status_does() {
        let t0 = Time(k8s_openapi::jiff::Timestamp::from_second(100).unwrap());
        let t1 = Time(k8s_openapi::jiff::Timestamp::from_second(200).unwrap());
        let problem = Problem {
            reason: "Invalid",
            message: "m".into(),
        };
        let first = valid_condition(Some(&problem), Some(1), None, t0.clone());
        let again = valid_condition(Some(&problem), Some(2), Some(&first), t1.clone());
        assert_eq!(again.last_transition_time, t0);
        assert!(!same(&first, &again), "a new generation is a change");
        let fixed = valid_condition(None, Some(2), Some(&again), t1.clone());
        assert_eq!(
            (fixed.status.as_str(), fixed.last_transition_time),
            ("True", t1)
        );
    }
}
