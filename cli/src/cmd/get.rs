//! `assay get workflows|executions|execution`.

use std::collections::BTreeMap;

use anyhow::Result;
use assay_proto::ListExecutionsRequest;
use serde::Serialize;

use crate::args::{GetCommand, Global, Output};
use crate::format::{self, Table, cell};
use crate::style::{Color, Palette, execution_color};
use crate::view::{ExecutionView, WorkflowView, labels_summary};
use crate::{api, provenance, report};

pub async fn run(global: &Global, cmd: GetCommand, palette: Palette) -> Result<u8> {
    match cmd {
        GetCommand::Workflows { output } => workflows(global, output, &palette),
        GetCommand::Executions {
            workflow,
            limit,
            labels,
            source,
            output,
        } => {
            let filter = Filter {
                workflow,
                labels: crate::cmd::trigger::parse_labels(&labels)?,
                source: source.filter(|s| !s.is_empty()),
            };
            executions(global, filter, limit, output, &palette).await
        }
        GetCommand::Execution { id, output } => execution(global, &id, output, &palette).await,
        GetCommand::Events {
            since,
            source,
            limit,
            output,
        } => crate::cmd::events::run(global, since, source, limit, output, &palette).await,
    }
}

/// Place in line of each queued execution: as the API reports it (the scheduler's start
/// order: priority, then arrival, per workflow or concurrency group), else per workflow,
/// oldest first (ids are ULIDs, so they sort by creation time).
pub fn queue_positions(
    executions: &[assay_proto::ExecutionUpdate],
) -> std::collections::HashMap<&str, usize> {
    let mut queued: Vec<&assay_proto::ExecutionUpdate> = executions
        .iter()
        .filter(|u| u.status() == assay_proto::ExecutionStatus::Queued)
        .collect();
    queued.sort_by(|a, b| (&a.workflow, &a.execution_id).cmp(&(&b.workflow, &b.execution_id)));
    let mut out = std::collections::HashMap::new();
    let mut last = "";
    let mut n = 0;
    for u in queued {
        if u.workflow != last {
            last = &u.workflow;
            n = 0;
        }
        n += 1;
        out.insert(u.execution_id.as_str(), n);
    }
    for u in executions {
        if u.queue_position > 0 && u.status() == assay_proto::ExecutionStatus::Queued {
            out.insert(u.execution_id.as_str(), u.queue_position as usize);
        }
    }
    out
}

/// Prints `value` as JSON or YAML.
pub fn print_structured<T: Serialize>(value: &T, output: Output) -> Result<()> {
    match output {
        Output::Json => crate::outln!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => crate::out!("{}", serde_norway::to_string(value)?),
        Output::Table | Output::Name => {}
    }
    Ok(())
}

fn workflows(global: &Global, output: Output, palette: &Palette) -> Result<u8> {
    let catalog = match crate::cmd::validate::load(&global.workflows) {
        Ok(c) => c,
        Err(e) => {
            crate::cmd::validate::print_errors(&e, palette);
            eprintln!(
                "fix the definitions above (`assay validate {}` shows them again)",
                global.workflows.display()
            );
            return Ok(1);
        }
    };
    let views: Vec<WorkflowView> = catalog
        .workflows()
        .map(WorkflowView::from_workflow)
        .collect();
    match output {
        Output::Json | Output::Yaml => print_structured(&views, output)?,
        Output::Name => {
            for v in &views {
                crate::outln!("{}", v.name);
            }
        }
        Output::Table => {
            if views.is_empty() {
                eprintln!("no workflows in {}", global.workflows.display());
                return Ok(0);
            }
            let mut table = Table::new(["NAME", "LABELS", "SHARDS", "PARAMETERS", "FILE"]);
            for v in &views {
                table.row(vec![
                    (v.name.clone(), Color::Bold),
                    cell(labels_summary(&v.labels)),
                    cell(v.shards.to_string()),
                    cell(v.parameters_summary()),
                    (v.file.clone(), Color::Dim),
                ]);
            }
            crate::out!("{}", table.render(palette));
        }
    }
    Ok(0)
}

/// What `get executions` asks the API for.
struct Filter {
    workflow: Option<String>,
    labels: BTreeMap<String, String>,
    source: Option<String>,
}

impl Filter {
    fn is_narrowed(&self) -> bool {
        !self.labels.is_empty() || self.source.is_some()
    }

    /// ` with branch=main from github` for the "nothing found" message.
    fn describe(&self) -> String {
        let mut out = String::new();
        if !self.labels.is_empty() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.push_str(&format!(" with {}", labels.join(", ")));
        }
        if let Some(s) = &self.source {
            out.push_str(&format!(" from source {s}"));
        }
        out
    }
}

async fn executions(
    global: &Global,
    filter: Filter,
    limit: u32,
    output: Output,
    palette: &Palette,
) -> Result<u8> {
    let mut client = api::connect(global).await?;
    let list = client
        .list_executions(ListExecutionsRequest {
            workflow: filter.workflow.clone().unwrap_or_default(),
            limit,
            labels: filter.labels.clone().into_iter().collect(),
            source: filter.source.clone().unwrap_or_default(),
        })
        .await
        .map_err(|s| api::call_error(&global.api, "list executions", &s))?
        .into_inner();
    let now = assay_bus::now_ms();
    match output {
        Output::Json | Output::Yaml => {
            let views: Vec<ExecutionView> = list
                .executions
                .iter()
                .map(|u| ExecutionView::from_update(u, now))
                .collect();
            print_structured(&views, output)?;
        }
        Output::Name => {
            for u in &list.executions {
                crate::outln!("{}", u.execution_id);
            }
        }
        Output::Table => {
            if list.executions.is_empty() {
                if filter.is_narrowed() {
                    let of = filter
                        .workflow
                        .as_deref()
                        .map(|w| format!(" of {w}"))
                        .unwrap_or_default();
                    eprintln!(
                        "no executions{of}{}; `assay get executions` lists them all",
                        filter.describe()
                    );
                    return Ok(0);
                }
                match filter.workflow {
                    Some(w) => {
                        eprintln!("no executions of {w} yet; start one with `assay run {w}`")
                    }
                    None => eprintln!("no executions yet; start one with `assay run WORKFLOW`"),
                }
                return Ok(0);
            }
            let mut table = Table::new([
                "ID", "WORKFLOW", "STATUS", "SOURCE", "PASSED", "FAILED", "SKIPPED", "AGE",
                "DURATION",
            ]);
            let positions = queue_positions(&list.executions);
            for u in &list.executions {
                let status = u.status();
                let failed = u.failed + u.errored;
                let shown = match positions.get(u.execution_id.as_str()) {
                    Some(p) => format!("{} #{p}", format::execution_status(status)),
                    None => format::execution_status(status).to_string(),
                };
                table.row(vec![
                    cell(u.execution_id.clone()),
                    cell(u.workflow.clone()),
                    (shown, execution_color(status)),
                    cell(provenance::source_cell(u.provenance.as_ref())),
                    cell(u.passed.to_string()),
                    (
                        failed.to_string(),
                        if failed > 0 { Color::Red } else { Color::Plain },
                    ),
                    cell(u.skipped.to_string()),
                    cell(if u.created_at_ms > 0 {
                        format::age(now - u.created_at_ms)
                    } else {
                        "-".into()
                    }),
                    cell(
                        format::execution_ms(u.created_at_ms, u.finished_at_ms, now)
                            .map(format::elapsed)
                            .unwrap_or_else(|| "-".into()),
                    ),
                ]);
            }
            crate::out!("{}", table.render(palette));
        }
    }
    Ok(0)
}

async fn execution(global: &Global, id: &str, output: Output, palette: &Palette) -> Result<u8> {
    let mut client = api::connect(global).await?;
    let detail = api::execution(&mut client, id)
        .await
        .map_err(|s| api::call_error(&global.api, &format!("get execution {id}"), &s))?;
    let now = assay_bus::now_ms();
    match output {
        Output::Json | Output::Yaml => {
            print_structured(&ExecutionView::from_detail(&detail, now), output)?;
        }
        Output::Name => {
            let execution = detail.execution.unwrap_or_default();
            crate::outln!("{}", execution.execution_id);
        }
        Output::Table => {
            let execution = detail.execution.clone().unwrap_or_default();
            crate::out!(
                "{}",
                report::header_block(&execution, &detail.rerun_of, now, palette)
            );
            let cause = provenance::cause_block(execution.provenance.as_ref(), palette);
            if !cause.is_empty() {
                crate::outln!();
                crate::out!("{cause}");
            }
            if !detail.shards.is_empty() {
                crate::outln!();
                crate::out!("{}", report::shard_table(&detail.shards, palette));
            }
            for section in [
                report::flaky(&detail.shards, palette),
                report::failures(&detail.shards, palette),
            ] {
                if !section.is_empty() {
                    crate::outln!();
                    crate::out!("{section}");
                }
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_executions_get_their_place_per_workflow() {
        use assay_proto::{ExecutionStatus, ExecutionUpdate};
        let u = |id: &str, wf: &str, st: ExecutionStatus| ExecutionUpdate {
            execution_id: id.into(),
            workflow: wf.into(),
            status: st as i32,
            ..Default::default()
        };
        let list = vec![
            u("03", "a", ExecutionStatus::Queued),
            u("02", "a", ExecutionStatus::Queued),
            u("01", "a", ExecutionStatus::Running),
            u("04", "b", ExecutionStatus::Queued),
        ];
        let p = queue_positions(&list);
        assert_eq!((p["02"], p["03"], p["04"]), (1, 2, 1));
        assert!(!p.contains_key("01"));
        // The API's order (priority first) wins over arrival.
        let mut list = list;
        list[0].queue_position = 1;
        list[1].queue_position = 2;
        let p = queue_positions(&list);
        assert_eq!((p["03"], p["02"]), (1, 2));
    }
}
