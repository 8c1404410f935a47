//! The definition types, mirroring the YAML.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Affinity, Toleration};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

use crate::Location;
use crate::crd::{self, TestStatus};
use crate::duration;

/// A parsed and validated definition from one YAML document.
#[derive(Debug, Clone, PartialEq)]
// Definitions are few and short-lived; unboxed variants keep matching on them simple.
#[allow(clippy::large_enum_variant)]
pub enum Definition {
    Workflow(Workflow),
    Trigger(Trigger),
}

impl Definition {
    pub fn name(&self) -> &str {
        match self {
            Definition::Workflow(w) => &w.name,
            Definition::Trigger(t) => &t.name,
        }
    }

    pub fn source(&self) -> &Location {
        match self {
            Definition::Workflow(w) => &w.source,
            Definition::Trigger(t) => &t.source,
        }
    }
}

/// A `TestWorkflow`: what to run.
#[derive(Debug, Clone, PartialEq)]
pub struct Workflow {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: WorkflowSpec,
    /// Where the document starts.
    pub source: Location,
}

/// A `TestTrigger`: when to run what.
#[derive(Debug, Clone, PartialEq)]
pub struct Trigger {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub spec: TriggerSpec,
    /// Where the document starts.
    pub source: Location,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metadata {
    pub name: String,
    #[serde(default, deserialize_with = "scalar_map")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "scalar_map")]
    pub annotations: BTreeMap<String, String>,
    /// Accepted so that custom resources read back from Kubernetes parse; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The `spec` of a `TestWorkflow`: what to run. Read from YAML files and from the custom
/// resource `testworkflows.assay.dev` (short name `tw`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema, CustomResource)]
#[kube(
    group = "assay.dev",
    version = "v1alpha1",
    kind = "TestWorkflow",
    namespaced,
    status = "TestStatus",
    shortname = "tw",
    derive = "PartialEq",
    doc = "A `TestWorkflow` custom resource: what to run; `spec` is the YAML file's `spec`.",
    printcolumn = r#"{"name":"Last status","type":"string","jsonPath":".status.lastExecutionStatus"}"#,
    printcolumn = r#"{"name":"Passed","type":"integer","jsonPath":".status.counts.passed"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.counts.failed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkflowSpec {
    /// Declared parameters; `--set k=v` may override only these.
    #[serde(default)]
    pub config: BTreeMap<String, Parameter>,
    /// Kubernetes backend only; refused by the validator until it exists.
    #[serde(default)]
    pub container: Option<Container>,
    /// Where the tests come from (a git checkout); refused by the validator until the
    /// Kubernetes backend exists.
    #[serde(default)]
    pub content: Option<Content>,
    #[serde(default, deserialize_with = "scalar_map")]
    #[schemars(schema_with = "crd::scalar_map_schema")]
    pub env: BTreeMap<String, String>,
    /// Absolute after parsing: a relative path is resolved against the file's directory.
    #[serde(default)]
    pub working_dir: Option<PathBuf>,
    #[serde(default)]
    pub setup: Vec<Step>,
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Runs even when earlier steps fail.
    #[serde(default)]
    pub after: Vec<Step>,
    #[serde(default)]
    pub tests: Option<Tests>,
    #[serde(default)]
    pub parallel: Parallel,
    #[serde(default)]
    pub concurrency: Concurrency,
    #[serde(default, with = "duration::opt")]
    #[schemars(schema_with = "crd::duration_schema")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retries: Retries,
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// Kubernetes backend only; refused by the validator until it exists.
    #[serde(default)]
    pub pod: Option<PodOverrides>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Parameter {
    #[serde(default, rename = "type")]
    pub r#type: ParamType,
    /// No default means the parameter is required.
    #[serde(default, deserialize_with = "opt_scalar")]
    #[schemars(schema_with = "crd::scalar_schema")]
    pub default: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub sensitive: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ParamType {
    #[default]
    String,
    Integer,
    Boolean,
}

impl ParamType {
    pub fn as_str(self) -> &'static str {
        match self {
            ParamType::String => "string",
            ParamType::Integer => "integer",
            ParamType::Boolean => "boolean",
        }
    }

    /// Describes what a valid value looks like, for error messages.
    pub fn expected(self) -> &'static str {
        match self {
            ParamType::String => "a string",
            ParamType::Integer => "an integer",
            ParamType::Boolean => "a boolean (true or false)",
        }
    }

    /// Checks `value` and returns its canonical spelling.
    pub fn check(self, value: &str) -> Option<String> {
        match self {
            ParamType::String => Some(value.to_string()),
            ParamType::Integer => value.trim().parse::<i64>().ok().map(|v| v.to_string()),
            ParamType::Boolean => match value.trim() {
                "true" | "True" | "TRUE" => Some("true".into()),
                "false" | "False" | "FALSE" => Some("false".into()),
                _ => None,
            },
        }
    }
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A declared parameter, as listed by `assay get workflows`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterInfo<'a> {
    pub name: &'a str,
    pub r#type: ParamType,
    pub default: Option<&'a str>,
    pub description: Option<&'a str>,
    pub sensitive: bool,
    pub required: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Container {
    pub image: String,
    #[serde(default)]
    pub image_pull_policy: Option<String>,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default, deserialize_with = "scalar_map")]
    #[schemars(schema_with = "crd::scalar_map_schema")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub resources: Option<Resources>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    #[serde(default, deserialize_with = "scalar_map")]
    #[schemars(schema_with = "crd::scalar_map_schema")]
    pub requests: BTreeMap<String, String>,
    #[serde(default, deserialize_with = "scalar_map")]
    #[schemars(schema_with = "crd::scalar_map_schema")]
    pub limits: BTreeMap<String, String>,
}

/// Settings of the runner's Pod (Kubernetes backend only; refused by the validator until it
/// exists). `affinity` and `tolerations` are kept as written and have the Kubernetes schemas
/// ([`Affinity`], [`Toleration`]); [`PodOverrides::affinity`] and
/// [`PodOverrides::tolerations`] read them as those types.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PodOverrides {
    #[serde(default, deserialize_with = "scalar_map")]
    #[schemars(schema_with = "crd::scalar_map_schema")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default)]
    #[schemars(with = "Option<Affinity>")]
    pub affinity: Option<serde_norway::Value>,
    #[serde(default)]
    #[schemars(with = "Vec<Toleration>")]
    pub tolerations: Vec<serde_norway::Value>,
    #[serde(default)]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub priority_class_name: Option<String>,
    /// Added to the Pod's labels.
    #[serde(default, deserialize_with = "scalar_map")]
    #[schemars(schema_with = "crd::scalar_map_schema")]
    pub labels: BTreeMap<String, String>,
    /// Added to the Pod's annotations.
    #[serde(default, deserialize_with = "scalar_map")]
    #[schemars(schema_with = "crd::scalar_map_schema")]
    pub annotations: BTreeMap<String, String>,
}

impl PodOverrides {
    /// `affinity` as the Kubernetes type; the error says what does not fit it.
    pub fn affinity(&self) -> Result<Option<Affinity>, String> {
        self.affinity
            .clone()
            .map(serde_norway::from_value)
            .transpose()
            .map_err(|e| format!("pod.affinity: {e}"))
    }

    /// `tolerations` as the Kubernetes type; the error names the first that does not fit.
    pub fn tolerations(&self) -> Result<Vec<Toleration>, String> {
        self.tolerations
            .iter()
            .enumerate()
            .map(|(i, t)| {
                serde_norway::from_value(t.clone())
                    .map_err(|e| format!("pod.tolerations[{i}]: {e}"))
            })
            .collect()
    }
}

/// Where a workflow's tests come from when they are not in its container image.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Content {
    /// A git repository the runner checks out (Kubernetes backend; not supported yet).
    #[serde(default)]
    pub git: Option<GitContent>,
}

/// A git checkout: at the triggering revision when an event names one, else `revision`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitContent {
    /// Clone URL (`https://…` or `git@…`).
    pub url: String,
    /// Branch, tag or commit; the default branch when absent.
    #[serde(default)]
    pub revision: Option<String>,
    /// Only these paths (sparse checkout); everything when empty.
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub credentials: Option<GitCredentials>,
}

/// Credentials for a private repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GitCredentials {
    /// A Secret in the workflow's namespace (keys `username` and `password`, or
    /// `ssh-privatekey`).
    pub secret_name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Step {
    pub name: String,
    /// Shell script.
    pub run: String,
    #[serde(default, with = "duration::opt")]
    #[schemars(schema_with = "crd::duration_schema")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retries: u32,
    /// When the step runs; unset: `success` for setup and steps, `always` for `after` steps
    /// (they run whatever happened unless they say otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub condition: Option<Condition>,
    #[serde(default, deserialize_with = "scalar_map")]
    #[schemars(schema_with = "crd::scalar_map_schema")]
    pub env: BTreeMap<String, String>,
}

/// When a step runs, given how the steps before it went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Condition {
    Always,
    #[default]
    Success,
    Failure,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tests {
    /// Lists test ids, one per line.
    #[serde(default)]
    pub list: Option<String>,
    /// Runs a subset: `{tests}` becomes the ids, `{report}` the report path.
    pub run: String,
    /// Globs of JUnit XML files (`{report}` allowed).
    #[serde(default)]
    pub reports: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Parallel {
    /// A number of shards, or `auto`: as many as the duration history says are needed to
    /// meet `targetDuration`, at most `maxCount`.
    #[serde(default)]
    pub count: ShardCount,
    /// With `count: auto`: the makespan to aim for.
    #[serde(default, with = "duration::opt")]
    #[schemars(schema_with = "crd::duration_schema")]
    pub target_duration: Option<Duration>,
    #[serde(default)]
    pub max_count: Option<u32>,
    /// Absent: `queue` when the workflow lists its tests, else `count` (see
    /// [`WorkflowSpec::strategy`]).
    #[serde(default)]
    pub strategy: Option<Strategy>,
    #[serde(default)]
    pub fail_fast: bool,
    /// Queue mode: what dispatching one batch costs (starting `tests.run`); batches are sized
    /// so it stays under 1 % of their run time. Default 100ms.
    #[serde(default, with = "duration::opt")]
    #[schemars(schema_with = "crd::duration_schema")]
    pub batch_overhead: Option<Duration>,
    /// Queue mode: how long a worker holds a batch without a sign of life before it goes back
    /// to the queue. Default 30s.
    #[serde(default, with = "duration::opt")]
    #[schemars(schema_with = "crd::duration_schema")]
    pub lease: Option<Duration>,
    /// Parameter lists whose cartesian product runs as separate shard groups, each with
    /// `count` shards; `{{ matrix.KEY }}` in commands and env, `ASSAY_MATRIX_KEY` in the
    /// environment, and test ids suffixed ` [key=value,...]`.
    #[serde(default)]
    #[schemars(schema_with = "crd::matrix_schema")]
    pub matrix: Option<BTreeMap<String, Vec<serde_norway::Value>>>,
}

/// `parallel.count`: a number, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardCount {
    Fixed(u32),
    Auto,
}

impl JsonSchema for ShardCount {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ShardCount".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        crd::shard_count_schema()
    }
}

impl Default for ShardCount {
    fn default() -> Self {
        ShardCount::Fixed(1)
    }
}

impl Serialize for ShardCount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            ShardCount::Fixed(n) => s.serialize_u32(*n),
            ShardCount::Auto => s.serialize_str("auto"),
        }
    }
}

impl<'de> Deserialize<'de> for ShardCount {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ShardCount;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number of shards or `auto`")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ShardCount, E> {
                u32::try_from(v)
                    .map(ShardCount::Fixed)
                    .map_err(|_| E::custom(format!("{v} shards is too many")))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ShardCount, E> {
                u64::try_from(v)
                    .map_err(|_| E::custom(format!("parallel.count must be at least 1, got {v}")))
                    .and_then(|v| self.visit_u64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ShardCount, E> {
                if v == "auto" {
                    Ok(ShardCount::Auto)
                } else {
                    Err(E::custom(format!(
                        "expected a number of shards or `auto`, got `{v}`"
                    )))
                }
            }
        }
        d.deserialize_any(V)
    }
}

impl Parallel {
    /// The shard count when fixed; with `count: auto`, `maxCount` (the most it may pick).
    pub fn max_shards(&self) -> u32 {
        match self.count {
            ShardCount::Fixed(n) => n.max(1),
            ShardCount::Auto => self.max_count.unwrap_or(1).max(1),
        }
    }
}

impl Default for Parallel {
    fn default() -> Self {
        Parallel {
            count: ShardCount::Fixed(1),
            target_duration: None,
            max_count: None,
            strategy: None,
            fail_fast: false,
            batch_overhead: None,
            lease: None,
            matrix: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    #[default]
    Count,
    Duration,
    Queue,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Concurrency {
    #[serde(default)]
    pub policy: Policy,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub max: Option<u32>,
    /// Order among executions waiting for the same slot (`policy: queue`): higher first,
    /// oldest first among equals; -1000 to 1000, default 0. A trigger's or a run request's
    /// priority overrides the workflow's.
    #[serde(default)]
    pub priority: Option<i32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    #[default]
    Allow,
    Forbid,
    /// Parsed but not supported yet.
    Replace,
    /// Parsed but not supported yet.
    Queue,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    #[serde(default)]
    pub count: u32,
    #[serde(default)]
    pub on: RetryOn,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RetryOn {
    /// Retry tests that failed or errored.
    Failed,
    /// Retry only tests that errored (infrastructure problems, crashes).
    #[default]
    Errored,
}

/// The `spec` of a `TestTrigger`: when to run what. Read from YAML files and from the
/// custom resource `testtriggers.assay.dev` (short name `tt`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema, CustomResource)]
#[kube(
    group = "assay.dev",
    version = "v1alpha1",
    kind = "TestTrigger",
    namespaced,
    status = "TestStatus",
    shortname = "tt",
    derive = "PartialEq",
    doc = "A `TestTrigger` custom resource: when to run what; `spec` is the YAML file's `spec`.",
    printcolumn = r#"{"name":"Last status","type":"string","jsonPath":".status.lastExecutionStatus"}"#,
    printcolumn = r#"{"name":"Passed","type":"integer","jsonPath":".status.counts.passed"}"#,
    printcolumn = r#"{"name":"Failed","type":"integer","jsonPath":".status.counts.failed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TriggerSpec {
    pub on: On,
    pub run: RunTarget,
    #[serde(default)]
    pub concurrency: Option<Concurrency>,
    /// Wait this long after the last matching event before running.
    #[serde(default, with = "duration::opt")]
    #[schemars(schema_with = "crd::duration_schema")]
    pub settle: Option<Duration>,
}

/// What a trigger reacts to; exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct On {
    #[serde(default)]
    pub event: Option<EventMatch>,
    #[serde(default)]
    pub cron: Option<CronSpec>,
    /// Changes of Kubernetes objects (see [`crate::KubernetesMatch`]); refused at load
    /// until the cluster watcher exists.
    #[serde(default)]
    pub kubernetes: Option<crate::KubernetesMatch>,
    /// Events from signed webhooks (GitHub, GitLab, generic), filtered by repository,
    /// branch, tag and changed paths.
    #[serde(default)]
    pub webhook: Option<WebhookMatch>,
}

/// Matches webhook events (those the trigger-watcher publishes from `/v1/webhooks/*`).
///
/// Every list is a list of globs, read in order: a pattern starting with `!` excludes what
/// it matches, the last pattern that matches decides, and a list with only exclusions starts
/// from "everything". `*` stays within one path segment, `**` crosses them. Empty lists
/// match anything, except that naming only `branches` leaves out tag pushes and naming only
/// `tags` leaves out branch pushes and pull requests.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WebhookMatch {
    /// `github`, `gitlab` or `generic`; any provider when absent.
    #[serde(default)]
    pub provider: Option<String>,
    /// `push`, `tag`, `pull_request` (`merge_request` is the same); any when empty.
    #[serde(default)]
    pub events: Vec<String>,
    /// Repository names (`owner/name`, GitLab's `group/sub/name`).
    #[serde(default)]
    pub repositories: Vec<String>,
    /// Branch names; for pull requests, the branch they merge into.
    #[serde(default)]
    pub branches: Vec<String>,
    /// Tag names.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Changed file paths: the event matches when at least one changed path is included.
    /// Events whose provider sends no complete list (pull requests, tags) pass.
    #[serde(default)]
    pub paths: Vec<String>,
}

/// Matches bus/HTTP events: empty source/type match any; every label must be equal.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EventMatch {
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default, rename = "type")]
    pub r#type: Option<String>,
    #[serde(default, deserialize_with = "scalar_map")]
    #[schemars(schema_with = "crd::scalar_map_schema")]
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CronSpec {
    /// 5 fields, or 6 with seconds first.
    pub schedule: String,
    /// IANA name; UTC when absent.
    #[serde(default)]
    pub timezone: Option<String>,
}

/// What a trigger runs: exactly one of `workflow` and `selector`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RunTarget {
    #[serde(default)]
    pub workflow: Option<String>,
    #[serde(default, deserialize_with = "opt_scalar_map")]
    #[schemars(schema_with = "crd::opt_scalar_map_schema")]
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default, deserialize_with = "scalar_map")]
    #[schemars(schema_with = "crd::scalar_map_schema")]
    pub config: BTreeMap<String, String>,
}

/// A YAML scalar (string, number, boolean) read as a string.
struct Scalar(String);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Scalar, E> {
                Ok(Scalar(v))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

fn scalar_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw: Option<BTreeMap<String, Scalar>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

fn opt_scalar_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<BTreeMap<String, String>>, D::Error> {
    let raw: Option<BTreeMap<String, Scalar>> = Option::deserialize(d)?;
    Ok(raw.map(|m| m.into_iter().map(|(k, v)| (k, v.0)).collect()))
}

fn opt_scalar<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let raw: Option<Scalar> = Option::deserialize(d)?;
    Ok(raw.map(|s| s.0))
}
