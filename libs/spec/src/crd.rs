//! `TestWorkflow` and `TestTrigger` as Kubernetes custom resources.
//!
//! The resources are derived from the types the YAML parser fills ([`crate::WorkflowSpec`],
//! [`crate::TriggerSpec`]), so a file and a resource cannot disagree on a field. Fields whose
//! serde is hand-written (durations, `parallel.count`, maps of scalars, free-form Kubernetes
//! objects) get the schemas in this module, written to accept what the parser accepts and to
//! be structural, as the API server requires. A resource read from the cluster becomes a
//! [`Definition`] through [`TestWorkflow::to_definition`] / [`TestTrigger::to_definition`],
//! which run the same validation as a file.

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use kube::CustomResourceExt;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::locate::Seg;
use crate::model::{Definition, Metadata, TestTrigger, TestWorkflow, Trigger, Workflow};
use crate::validate::{self, Problem};
use crate::{Diagnostic, Error, KIND_TRIGGER, KIND_WORKFLOW, Location, Result};

/// Where the generated CRDs are committed, relative to the repository root.
pub const CRD_DIR: &str = "deploy/k8s/crds";

/// The command that regenerates the files under [`CRD_DIR`].
pub const REGENERATE: &str = "make crds";

/// The condition type that says whether the resource's spec passed validation.
pub const CONDITION_VALID: &str = "Valid";

/// A duration as [`crate::parse_duration`] reads it: numbers with units `d`, `h`, `m`, `s`,
/// `ms`, largest first (`500ms`, `30s`, `1h30m`), surrounding blanks allowed.
pub const DURATION_PATTERN: &str = r"^\s*([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?\s*$";

/// What the scheduler and the result aggregator report back on a `TestWorkflow` or
/// `TestTrigger` (its `status` subresource).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestStatus {
    /// The id of the last execution this resource started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_execution_id: Option<String>,
    /// That execution's status (`queued`, `running`, `passed`, `failed`, `errored`,
    /// `cancelled`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_execution_status: Option<String>,
    /// Its test-case counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counts: Option<Counts>,
    /// When it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_time: Option<Time>,
    /// `Valid` (the spec passed validation; the message is the error when it did not), and
    /// any others a controller adds; one per type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// Test-case counts of one execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    #[serde(default)]
    pub passed: u64,
    #[serde(default)]
    pub failed: u64,
    #[serde(default)]
    pub skipped: u64,
    #[serde(default)]
    pub errored: u64,
    #[serde(default)]
    pub total: u64,
}

/// The `Valid` condition for a resource whose conversion gave `result`: `True` with reason
/// `Validated`, or `False` with reason `Invalid` and every problem, one per line, as message.
pub fn valid_condition(
    result: &Result<Definition>,
    observed_generation: Option<i64>,
    now: Time,
) -> Condition {
    let (status, reason, message) = match result {
        Ok(_) => ("True", "Validated", String::new()),
        Err(e) => ("False", "Invalid", e.to_string()),
    };
    Condition {
        type_: CONDITION_VALID.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        last_transition_time: now,
        observed_generation,
    }
}

impl TestWorkflow {
    /// The workflow this resource defines, validated exactly as a YAML file is: the same
    /// checks, the same messages and hints. Diagnostics have no line (a resource has none):
    /// their place is `TestWorkflow <namespace>/<name>` and the field path.
    pub fn to_definition(&self) -> Result<Definition> {
        let (metadata, source) = metadata(KIND_WORKFLOW, &self.metadata);
        let mut problems = validate::metadata(&metadata);
        problems.extend(validate::workflow(&self.spec));
        finish(&source, problems)?;
        Ok(Definition::Workflow(Workflow {
            name: metadata.name,
            labels: metadata.labels,
            spec: self.spec.clone(),
            source,
        }))
    }
}

impl TestTrigger {
    /// The trigger this resource defines, validated exactly as a YAML file is (see
    /// [`TestWorkflow::to_definition`]).
    pub fn to_definition(&self) -> Result<Definition> {
        let (metadata, source) = metadata(KIND_TRIGGER, &self.metadata);
        let mut problems = validate::metadata(&metadata);
        problems.extend(validate::trigger(&self.spec));
        finish(&source, problems)?;
        Ok(Definition::Trigger(Trigger {
            name: metadata.name,
            labels: metadata.labels,
            spec: self.spec.clone(),
            source,
        }))
    }
}

/// The parser's view of a resource's metadata, and where the resource is: `<kind>
/// <namespace>/<name>` with no line.
fn metadata(kind: &str, meta: &ObjectMeta) -> (Metadata, Location) {
    let metadata = Metadata {
        name: meta.name.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        namespace: meta.namespace.clone(),
    };
    let place = match &metadata.namespace {
        Some(ns) => format!("{kind} {ns}/{}", metadata.name),
        None => format!("{kind} {}", metadata.name),
    };
    let source = Location {
        file: PathBuf::from(place),
        line: 0,
        column: 0,
    };
    (metadata, source)
}

/// Every problem as a diagnostic at `source` followed by its field path.
fn finish(source: &Location, problems: Vec<Problem>) -> Result<()> {
    if problems.is_empty() {
        return Ok(());
    }
    let diags = problems
        .into_iter()
        .map(|p| {
            let mut at = source.clone();
            if !p.path.is_empty() {
                at.file =
                    PathBuf::from(format!("{} {}", source.file.display(), field_path(&p.path)));
            }
            let mut d = Diagnostic::new(at, p.message);
            d.hint = p.hint;
            d
        })
        .collect();
    Err(Error::Invalid(diags))
}

/// `spec.steps[2].timeout`.
fn field_path(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Both CustomResourceDefinitions, `TestWorkflow` first.
///
/// Their schemas carry no `default`s: the parser applies the defaults itself, and a stored
/// resource stays what its author wrote instead of gaining every absent field from the API
/// server's defaulting.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        without_defaults(TestWorkflow::crd()),
        without_defaults(TestTrigger::crd()),
    ]
}

fn without_defaults(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            strip_defaults(schema);
        }
    }
    crd
}

/// Removes `default` from `schema` and every schema below it (not properties that happen to
/// be called `default`, such as a parameter's).
fn strip_defaults(schema: &mut JSONSchemaProps) {
    schema.default = None;
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_defaults(child);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(items)) = &mut schema.items {
        strip_defaults(items);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = &mut schema.additional_properties {
        strip_defaults(extra);
    }
}

/// One CRD as YAML, with a header that says it is generated.
fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    // A CustomResourceDefinition is plain data (strings, maps, JSON values): it always
    // serializes.
    let body = serde_norway::to_string(crd).expect("a CustomResourceDefinition serializes");
    format!("# Generated from libs/spec (assay crds); do not edit, run `{REGENERATE}`.\n{body}")
}

/// Both CRDs as one multi-document YAML stream (what `assay crds` prints).
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(crd_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The files of [`CRD_DIR`], as `(file name, content)`: one per CRD, named after it
/// (`testworkflows.assay.dev.yaml`), and a `kustomization.yaml` listing them.
pub fn crd_files() -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = crds()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            (format!("{name}.yaml"), crd_yaml(crd))
        })
        .collect();
    let mut kustomization = format!(
        "# Generated by `assay crds --output-dir {CRD_DIR}`; run `{REGENERATE}`.\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n"
    );
    for (name, _) in &files {
        kustomization.push_str(&format!("  - {name}\n"));
    }
    files.push(("kustomization.yaml".to_string(), kustomization));
    files
}

/// `timeout: 30s` and every other duration.
pub(crate) fn duration_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "string",
        "nullable": true,
        "pattern": DURATION_PATTERN,
        "description": "A duration: a number with a unit (d, h, m, s, ms), several largest first, e.g. 500ms, 30s, 5m, 1h30m."
    })
}

/// `parallel.count`: a positive number of shards or `auto`.
pub(crate) fn shard_count_schema() -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "description": "A number of shards, or `auto`."
    })
}

/// A value the parser reads as a string: a string, number or boolean.
pub(crate) fn scalar_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-preserve-unknown-fields": true,
        "nullable": true,
        "description": "A string, number or boolean (read as a string)."
    })
}

/// `env` and the other maps whose values the parser reads as strings.
pub(crate) fn scalar_map_schema(g: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "additionalProperties": scalar_schema(g),
    })
}

/// An optional map of scalars (`run.selector`).
pub(crate) fn opt_scalar_map_schema(g: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "additionalProperties": scalar_schema(g),
    })
}

/// `parallel.matrix`: parameter name to a list of scalar values.
pub(crate) fn matrix_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "nullable": true,
        "additionalProperties": {
            "type": "array",
            "items": {
                "x-kubernetes-preserve-unknown-fields": true,
                "description": "A string, number or boolean."
            }
        }
    })
}
