//! Which tests each shard of each matrix combination gets: from the workflow's strategy
//! and history (a listed run), an explicit selection of ids (a rerun of failed tests) or a
//! frozen shard plan (`assay rerun --same-plan`).

use std::collections::BTreeMap;

use assay_proto::TailBatch;
use assay_spec::{Workflow, variant_label};

use super::{DEFAULT_BATCH_OVERHEAD_MS, Selection, ms, shard_count_for};
use crate::{Error, Result};

/// One matrix combination's shards (the whole workflow when it has no matrix).
pub(super) struct Group {
    pub(super) combination: BTreeMap<String, String>,
    pub(super) variant: String,
    /// The shards' explicit test ids (listed ids, without the variant suffix); empty lists
    /// when the runners list the tests themselves.
    pub(super) shards: Vec<Vec<String>>,
    /// Duration mode: stable hashes of every test the group's plan assigned (head and tail).
    pub(super) planned_hashes: Vec<u64>,
    /// Duration mode: the plan's shared tail, which every shard of the group drains after
    /// its own tests.
    pub(super) tail: Vec<TailBatch>,
}

/// Which group a qualified test id belongs to, and the listed id inside it.
fn group_of<'a>(variants: &[String], id: &'a str) -> Option<(usize, &'a str)> {
    variants
        .iter()
        .enumerate()
        .find_map(|(g, v)| assay_plan::unqualify(id, v).map(|raw| (g, raw)))
}

fn unknown_variant(workflow: &str, id: &str) -> Error {
    Error::Spec(format!(
        "test id \"{id}\" belongs to no matrix combination of workflow \"{workflow}\" (did its matrix change?); run the workflow again instead"
    ))
}

/// The groups of `workflow` for `selection`, each with its shards' tests, and the strategy
/// the shards are told (`duration` and `queue` only for a listed run; `count` otherwise).
pub(super) fn assign(
    workflow: &Workflow,
    history: &assay_plan::History,
    selection: &Selection,
) -> Result<(Vec<Group>, &'static str)> {
    let spec = &workflow.spec;
    let combinations = spec.combinations().map_err(Error::spec)?;
    let variants: Vec<String> = combinations.iter().map(variant_label).collect();
    let strategy = spec.strategy();
    let by_duration =
        matches!(selection, Selection::Listed) && strategy == assay_spec::Strategy::Duration;
    let by_queue =
        matches!(selection, Selection::Listed) && strategy == assay_spec::Strategy::Queue;
    let mut groups: Vec<Group> = combinations
        .into_iter()
        .zip(&variants)
        .map(|(combination, variant)| Group {
            combination,
            variant: variant.clone(),
            shards: Vec::new(),
            planned_hashes: Vec::new(),
            tail: Vec::new(),
        })
        .collect();
    match selection {
        Selection::Listed => {
            for g in &mut groups {
                let h = history.for_variant(&g.variant);
                let n = shard_count_for(spec, &h) as usize;
                g.shards = if by_duration {
                    let known: Vec<String> = h.ids().map(str::to_string).collect();
                    let overhead = ms(spec.parallel.batch_overhead, DEFAULT_BATCH_OVERHEAD_MS);
                    let p = assay_plan::duration_plan(&known, &h, n, overhead as f64);
                    g.planned_hashes = p.all_ids().map(assay_plan::stable_hash).collect();
                    g.tail = p
                        .tail
                        .iter()
                        .map(|b| TailBatch {
                            test_hashes: b
                                .tests
                                .iter()
                                .map(|t| assay_plan::stable_hash(t))
                                .collect(),
                            expected_ms: b.expected_ms,
                        })
                        .collect();
                    p.head.shards
                } else {
                    vec![Vec::new(); n]
                };
            }
        }
        // Explicit selections fix the shards: no empty shard (it would list the whole suite).
        Selection::Ids(ids) => {
            let mut by_group: Vec<Vec<String>> = vec![Vec::new(); groups.len()];
            for qualified in ids {
                let (g, raw) = group_of(&variants, qualified)
                    .ok_or_else(|| unknown_variant(&workflow.name, qualified))?;
                by_group[g].push(raw.to_string());
            }
            for (g, ids) in groups.iter_mut().zip(by_group) {
                if ids.is_empty() {
                    continue;
                }
                let n = (spec.parallel.max_shards() as usize).min(ids.len()).max(1);
                g.shards = assay_spec::shard::split_by_count(&ids, n);
            }
        }
        Selection::Frozen(shards) => {
            for shard in shards.iter().filter(|s| !s.is_empty()) {
                let (g, _) = group_of(&variants, &shard[0])
                    .ok_or_else(|| unknown_variant(&workflow.name, &shard[0]))?;
                let raw = shard
                    .iter()
                    .map(|t| {
                        assay_plan::unqualify(t, &variants[g])
                            .map(str::to_string)
                            .ok_or_else(|| unknown_variant(&workflow.name, t))
                    })
                    .collect::<Result<Vec<_>>>()?;
                groups[g].shards.push(raw);
            }
        }
    }
    let name = if by_duration {
        "duration"
    } else if by_queue {
        "queue"
    } else {
        "count"
    };
    Ok((groups, name))
}
