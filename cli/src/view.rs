//! What `get -o json|yaml` prints: stable, serde-friendly views of catalog entries and
//! API messages (statuses as lowercase strings, times as RFC 3339).

use std::collections::BTreeMap;

use assay_proto::{ExecutionDetail, ExecutionUpdate, ShardDetail, ShardSummary, TestCaseResult};
use serde::Serialize;

use crate::format;
use crate::provenance::ProvenanceView;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowView {
    pub name: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub shards: u32,
    pub strategy: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parameters: Vec<ParameterView>,
    pub file: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ParameterView {
    pub name: String,
    #[serde(rename = "type")]
    pub r#type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl WorkflowView {
    pub fn from_workflow(w: &assay_spec::Workflow) -> WorkflowView {
        WorkflowView {
            name: w.name.clone(),
            labels: w.labels.clone(),
            shards: w.spec.parallel.max_shards(),
            strategy: format!("{:?}", w.spec.strategy()).to_lowercase(),
            parameters: w
                .parameters()
                .into_iter()
                .map(|p| ParameterView {
                    name: p.name.to_string(),
                    r#type: p.r#type.as_str().to_string(),
                    // Sensitive defaults are never printed.
                    default: p.default.map(|d| {
                        if p.sensitive {
                            "********".to_string()
                        } else {
                            d.to_string()
                        }
                    }),
                    required: p.required,
                    description: p.description.map(str::to_string),
                })
                .collect(),
            file: w.source.to_string(),
        }
    }

    /// `name=default` / `name` (required) for the table.
    pub fn parameters_summary(&self) -> String {
        self.parameters
            .iter()
            .map(|p| match &p.default {
                Some(d) => format!("{}={d}", p.name),
                None => format!("{} (required)", p.name),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `k=v,k2=v2`.
pub fn labels_summary(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExecutionView {
    pub id: String,
    pub workflow: String,
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    pub passed: u32,
    pub failed: u32,
    pub errored: u32,
    pub skipped: u32,
    /// Passed only on a retry (also counted in `passed`).
    pub flaky: u32,
    pub created_at: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub finished_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub revision: u64,
    /// The execution this one reruns (`assay rerun`); only in the detail view.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub rerun_of: String,
    /// What caused it (trigger, event, labels); absent while not known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provenance: Option<ProvenanceView>,
    pub shards: Vec<ShardView>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardView {
    pub index: u32,
    pub state: String,
    pub attempt: u32,
    pub passed: u32,
    pub failed: u32,
    pub errored: u32,
    pub skipped: u32,
    pub flaky: u32,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tests: Option<Vec<TestView>>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TestView {
    pub id: String,
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub classname: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub file: String,
    pub status: String,
    /// How many times the test ran (per-test retries).
    pub attempts: u32,
    /// Failed or errored first, then passed on a retry.
    pub flaky: bool,
    pub duration_ms: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub failure_message: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub output: String,
}

impl ExecutionView {
    /// The summary view (no test cases). `now_ms` measures the run time of running executions.
    pub fn from_update(u: &ExecutionUpdate, now_ms: i64) -> ExecutionView {
        ExecutionView {
            id: u.execution_id.clone(),
            workflow: u.workflow.clone(),
            status: format::execution_status(u.status()).to_string(),
            reason: u.reason.clone(),
            passed: u.passed,
            failed: u.failed,
            errored: u.errored,
            skipped: u.skipped,
            flaky: u.flaky,
            created_at: format::timestamp(u.created_at_ms),
            finished_at: format::timestamp(u.finished_at_ms),
            duration_ms: format::execution_ms(u.created_at_ms, u.finished_at_ms, now_ms),
            revision: u.revision,
            rerun_of: String::new(),
            provenance: ProvenanceView::from_proto(u.provenance.as_ref()),
            shards: u.shards.iter().map(ShardView::from_summary).collect(),
        }
    }

    /// The full view, with every shard's exit code and test cases.
    pub fn from_detail(d: &ExecutionDetail, now_ms: i64) -> ExecutionView {
        let empty = ExecutionUpdate::default();
        let mut view = ExecutionView::from_update(d.execution.as_ref().unwrap_or(&empty), now_ms);
        view.rerun_of = d.rerun_of.clone();
        if !d.shards.is_empty() {
            view.shards = d.shards.iter().map(ShardView::from_detail).collect();
        }
        view
    }
}

impl ShardView {
    pub fn from_summary(s: &ShardSummary) -> ShardView {
        ShardView {
            index: s.index,
            state: format::shard_state(s.state()).to_string(),
            attempt: s.attempt,
            passed: s.passed,
            failed: s.failed,
            errored: s.errored,
            skipped: s.skipped,
            flaky: s.flaky,
            duration_ms: s.duration_ms,
            reason: s.reason.clone(),
            exit_code: None,
            tests: None,
        }
    }

    pub fn from_detail(d: &ShardDetail) -> ShardView {
        let summary = d.summary.clone().unwrap_or_default();
        ShardView {
            exit_code: Some(d.exit_code),
            tests: Some(d.tests.iter().map(TestView::from_result).collect()),
            ..ShardView::from_summary(&summary)
        }
    }
}

impl TestView {
    pub fn from_result(t: &TestCaseResult) -> TestView {
        TestView {
            id: t.id.clone(),
            name: t.name.clone(),
            classname: t.classname.clone(),
            file: t.file.clone(),
            status: format::test_status(t.status()).to_string(),
            attempts: t.attempts.max(1),
            flaky: t.flaky,
            duration_ms: t.duration_ms,
            failure_message: t.failure_message.clone(),
            output: t.output.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assay_proto::{ExecutionStatus, ShardState, TestStatus};

    fn update() -> ExecutionUpdate {
        ExecutionUpdate {
            execution_id: "01J".into(),
            workflow: "e2e".into(),
            status: ExecutionStatus::TimedOut as i32,
            passed: 3,
            skipped: 1,
            created_at_ms: 1_700_000_000_000,
            finished_at_ms: 1_700_000_012_300,
            revision: 7,
            shards: vec![ShardSummary {
                index: 0,
                state: ShardState::Failed as i32,
                attempt: 1,
                failed: 1,
                duration_ms: 1_500,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn update_view() {
        let v = ExecutionView::from_update(&update(), 0);
        assert_eq!(v.status, "timed-out");
        assert_eq!(v.duration_ms, Some(12_300));
        assert_eq!(v.created_at, "2023-11-14T22:13:20Z");
        assert_eq!(v.shards[0].state, "failed");
        assert_eq!(v.shards[0].tests, None);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["status"], "timed-out");
        assert!(json.get("reason").is_none(), "empty reason is left out");
        assert!(
            json.get("provenance").is_none(),
            "unknown cause is left out"
        );
        let mut u = update();
        u.provenance = Some(assay_proto::Provenance {
            source: "github".into(),
            labels: [("branch".to_string(), "main".to_string())].into(),
            ..Default::default()
        });
        let json = serde_json::to_value(ExecutionView::from_update(&u, 0)).unwrap();
        assert_eq!(json["provenance"]["source"], "github");
        assert_eq!(json["provenance"]["labels"]["branch"], "main");
        assert!(json["shards"][0].get("tests").is_none());
    }

    #[test]
    fn detail_view_has_tests() {
        let detail = ExecutionDetail {
            execution: Some(update()),
            shards: vec![ShardDetail {
                summary: Some(update().shards[0].clone()),
                exit_code: 1,
                tests: vec![TestCaseResult {
                    id: "a::b".into(),
                    name: "b".into(),
                    classname: "a".into(),
                    status: TestStatus::Failed as i32,
                    failure_message: "boom".into(),
                    ..Default::default()
                }],
            }],
            ..Default::default()
        };
        let v = ExecutionView::from_detail(&detail, 0);
        assert!(
            serde_json::to_value(&v).unwrap().get("rerun_of").is_none(),
            "not a rerun: no link"
        );
        let tests = v.shards[0].tests.as_ref().unwrap();
        assert_eq!(tests[0].status, "failed");
        assert_eq!((tests[0].attempts, tests[0].flaky), (1, false), "ran once");
        assert_eq!(v.shards[0].exit_code, Some(1));
        let yaml = serde_norway::to_string(&v).unwrap();
        assert!(yaml.contains("failure_message: boom"));
    }

    #[test]
    fn a_shard_waiting_for_capacity_is_shown_as_such_with_why() {
        let v = ShardView::from_summary(&ShardSummary {
            index: 1,
            state: ShardState::WaitingForCapacity as i32,
            attempt: 1,
            reason: "2 of 2 runners busy".into(),
            ..Default::default()
        });
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["state"], "waiting for capacity");
        assert_eq!(json["reason"], "2 of 2 runners busy");
    }

    #[test]
    fn views_carry_attempts_and_flaky() {
        let mut u = update();
        u.flaky = 1;
        u.shards[0].flaky = 1;
        let detail = ExecutionDetail {
            execution: Some(u.clone()),
            shards: vec![ShardDetail {
                summary: Some(u.shards[0].clone()),
                tests: vec![TestCaseResult {
                    id: "a::b".into(),
                    status: TestStatus::Passed as i32,
                    attempts: 2,
                    flaky: true,
                    ..Default::default()
                }],
                exit_code: 0,
            }],
            ..Default::default()
        };
        let v = ExecutionView::from_detail(&detail, 0);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["flaky"], 1);
        assert_eq!(json["shards"][0]["flaky"], 1);
        assert_eq!(json["shards"][0]["tests"][0]["attempts"], 2);
        assert_eq!(json["shards"][0]["tests"][0]["flaky"], true);
        let yaml = serde_norway::to_string(&v).unwrap();
        assert!(yaml.contains("attempts: 2"), "{yaml}");
        assert!(yaml.contains("flaky: true"), "{yaml}");
    }

    #[test]
    fn detail_view_links_the_rerun_original() {
        let detail = ExecutionDetail {
            execution: Some(update()),
            rerun_of: "01ORIG".into(),
            ..Default::default()
        };
        let v = ExecutionView::from_detail(&detail, 0);
        assert_eq!(serde_json::to_value(&v).unwrap()["rerun_of"], "01ORIG");
        assert!(
            serde_norway::to_string(&v)
                .unwrap()
                .contains("rerun_of: 01ORIG")
        );
    }

    #[test]
    fn detail_without_execution_does_not_panic() {
        let v = ExecutionView::from_detail(&ExecutionDetail::default(), 0);
        assert_eq!(v.status, "unknown");
        assert!(v.shards.is_empty());
    }

    #[test]
    fn workflow_view_hides_sensitive_defaults() {
        let yaml = r#"
apiVersion: assay.dev/v1alpha1
kind: TestWorkflow
metadata: {name: api, labels: {team: pay}}
spec:
  config:
    baseUrl: {type: string, default: "http://x"}
    token: {type: string, default: "s3cret", sensitive: true}
    region: {type: string}
  parallel: {count: 4}
  steps:
    - name: t
      run: echo hi
"#;
        let defs = assay_spec::parse_str(std::path::Path::new("w.yaml"), yaml).unwrap();
        let assay_spec::Definition::Workflow(w) = &defs[0] else {
            panic!("expected a workflow")
        };
        let v = WorkflowView::from_workflow(w);
        assert_eq!(v.shards, 4);
        assert_eq!(v.strategy, "count");
        assert_eq!(labels_summary(&v.labels), "team=pay");
        assert!(v.file.starts_with("w.yaml:"));
        let summary = v.parameters_summary();
        assert!(summary.contains("baseUrl=http://x"));
        assert!(summary.contains("region (required)"));
        assert!(!summary.contains("s3cret"));
    }
}
