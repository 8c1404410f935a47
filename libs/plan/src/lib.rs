//! Shard planning for assay: which runner runs which test.
//!
//! Everything here is pure (no I/O, no clocks, no randomness): the same input gives the same
//! plan on every runner, which is what lets each runner list its tests itself and still run
//! every test exactly once across shards.
//!
//! - [`count_split`]: contiguous split by count, the baseline.
//! - [`duration_plan`]: the `duration` strategy: a longest-processing-time-first ([`lpt`])
//!   plan from a [`History`] of durations for the head of each shard, and a shared tail of the
//!   shortest tests ([`TAIL_FRACTION`] of the work) that every shard drains from a work queue
//!   after its head; [`duration_share`] is what one runner takes from the head, with tests
//!   the plan does not know placed by [`hash_shard`].
//! - [`queue_batches`] + [`LeaseQueue`]: the `queue` strategy's work queue and its lease-based
//!   state machine.
//! - [`auto_count`], [`expand_matrix`], [`dedup`]: shard count, matrix and listing helpers.
//! - [`sim`]: a discrete-event simulation of the three strategies (used by `bench-sharding`).
//!
//! `m` (the number of shards or workers) of 0 is treated as 1 throughout.

mod error;
mod history;
mod matrix;
mod queue;
pub mod sim;
mod split;
mod tail;

/// Suites the unit tests of several modules share: `t000`, `t001`, … and their exact
/// durations.
#[cfg(test)]
pub(crate) mod test_support {
    use crate::{Estimate, History, TestId};

    pub fn ids(n: usize) -> Vec<TestId> {
        (0..n).map(|i| format!("t{i:03}")).collect()
    }

    pub fn history(durations: &[f64]) -> History {
        durations
            .iter()
            .enumerate()
            .map(|(i, &d)| (format!("t{i:03}"), Estimate::exact(d)))
            .collect()
    }
}

pub use error::{Error, Result};
pub use history::{Estimate, History};
pub use matrix::{dedup, expand_matrix};
pub use queue::{Batch, LeaseQueue, queue_batches};
pub use split::{
    Plan, auto_count, count_split, duration_share, hash_shard, lower_bound, lpt, share_from_hashes,
    stable_hash,
};
pub use tail::{
    DurationPlan, TAIL_FRACTION, TAIL_MIN_TESTS_PER_SHARD, duration_plan, resolve_hashes,
};

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A test's id as the runner lists it (e.g. `pkg::module::test_name`).
pub type TestId = String;

/// A test id as results carry it: `id [variant]` for a matrix combination's shard
/// (`tests/a.py::t [os=linux,python=3.12]`), `id` itself without matrix.
pub fn qualify(id: &str, variant: &str) -> String {
    if variant.is_empty() {
        id.to_string()
    } else {
        format!("{id} [{variant}]")
    }
}

/// The listed id inside `qualified` when it carries `variant` (the inverse of [`qualify`]);
/// `None` when it belongs to another combination. The empty variant matches every id.
pub fn unqualify<'a>(qualified: &'a str, variant: &str) -> Option<&'a str> {
    if variant.is_empty() {
        return Some(qualified);
    }
    qualified
        .strip_suffix(']')
        .and_then(|s| s.strip_suffix(variant))
        .and_then(|s| s.strip_suffix(" ["))
}

/// How an execution's tests are spread over its shards (`parallel.strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Contiguous split by count: the baseline.
    Count,
    /// Longest-processing-time-first plan from history for each shard's head, then a
    /// shared queue of the shortest tests.
    Duration,
    /// Workers pull batches from a per-execution queue, longest first.
    Queue,
}

impl Strategy {
    /// The default: `queue` when the workflow lists its tests, otherwise `count`.
    pub fn default_for(lists_tests: bool) -> Self {
        if lists_tests {
            Strategy::Queue
        } else {
            Strategy::Count
        }
    }

    /// The name used in definitions.
    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Count => "count",
            Strategy::Duration => "duration",
            Strategy::Queue => "queue",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Strategy {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "count" => Ok(Strategy::Count),
            "duration" => Ok(Strategy::Duration),
            "queue" => Ok(Strategy::Queue),
            other => Err(Error::UnknownStrategy(other.to_owned())),
        }
    }
}

/// A total order on `f64` (via [`f64::total_cmp`]) for heaps of loads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Ms(pub(crate) f64);

impl Eq for Ms {}

impl PartialOrd for Ms {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Ms {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod qualify_tests {
    use super::*;

    #[test]
    fn qualify_round_trips_and_tells_combinations_apart() {
        let q = qualify("tests/a.py::t[1-2]", "os=linux,py=3.12");
        assert_eq!(q, "tests/a.py::t[1-2] [os=linux,py=3.12]");
        assert_eq!(
            unqualify(&q, "os=linux,py=3.12"),
            Some("tests/a.py::t[1-2]")
        );
        assert_eq!(
            unqualify(&q, "py=3.12"),
            None,
            "a suffix of the label is not the label"
        );
        assert_eq!(unqualify(&q, "os=mac,py=3.12"), None);
        assert_eq!(qualify("t", ""), "t");
        assert_eq!(unqualify("t [x=1]", ""), Some("t [x=1]"));
        let h: History = [
            (q.clone(), Estimate::exact(5.0)),
            (
                "tests/b.py::u [os=mac,py=3.12]".into(),
                Estimate::exact(7.0),
            ),
        ]
        .into_iter()
        .collect();
        let linux = h.for_variant("os=linux,py=3.12");
        assert_eq!(linux.ids().collect::<Vec<_>>(), ["tests/a.py::t[1-2]"]);
        assert_eq!(h.for_variant("").len(), 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strategy_round_trips() {
        for s in [Strategy::Count, Strategy::Duration, Strategy::Queue] {
            assert_eq!(s.as_str().parse::<Strategy>(), Ok(s));
        }
        let err = "fastest".parse::<Strategy>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown sharding strategy \"fastest\" (known: count, duration, queue)"
        );
        assert_eq!(Strategy::default_for(true), Strategy::Queue);
        assert_eq!(Strategy::default_for(false), Strategy::Count);
    }
}
