use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::TestId;

/// Duration knowledge for one test (from the aggregator's history).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// Expected run time (the aggregator's exponentially weighted mean); plans use this.
    pub mean_ms: f64,
    /// A high percentile, for callers that want a pessimistic figure.
    pub p90_ms: f64,
}

impl Estimate {
    /// An estimate whose mean and p90 are both `ms`.
    pub fn exact(ms: f64) -> Self {
        Estimate {
            mean_ms: ms,
            p90_ms: ms,
        }
    }

    fn is_usable(&self) -> bool {
        self.mean_ms.is_finite() && self.mean_ms >= 0.0
    }
}

/// Per-test duration estimates for one workflow. Ordered by id, so every computation over it
/// (such as [`History::mean_of_known`]) is deterministic.
///
/// An estimate whose mean is negative, NaN or infinite is not stored: such a test counts as
/// unknown.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    by_id: BTreeMap<TestId, Estimate>,
    /// Measured cost of starting one shard (scheduling, process start, set-up), if known.
    #[serde(default)]
    shard_start_ms: Option<f64>,
}

impl History {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records (or replaces) a test's estimate; returns false, storing nothing, when the
    /// mean is not a finite non-negative number.
    pub fn insert(&mut self, id: impl Into<TestId>, estimate: Estimate) -> bool {
        if !estimate.is_usable() {
            return false;
        }
        self.by_id.insert(id.into(), estimate);
        true
    }

    /// Records the measured cost of starting one shard (ignored unless finite and ≥ 0).
    pub fn set_shard_start_ms(&mut self, ms: f64) {
        self.shard_start_ms = (ms.is_finite() && ms >= 0.0).then_some(ms);
    }

    /// The measured cost of starting one shard, if known.
    pub fn shard_start_ms(&self) -> Option<f64> {
        self.shard_start_ms
    }

    /// The ids with an estimate, sorted.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_id.keys().map(String::as_str)
    }

    pub fn get(&self, id: &str) -> Option<&Estimate> {
        self.by_id.get(id)
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The mean of the known tests' `mean_ms`; `None` when no test is known.
    pub fn mean_of_known(&self) -> Option<f64> {
        if self.by_id.is_empty() {
            return None;
        }
        let sum: f64 = self.by_id.values().map(|e| e.mean_ms).sum();
        Some(sum / self.by_id.len() as f64)
    }

    /// What a plan assumes for unknown tests: the mean of the known ones, or 1.0 when none
    /// is known (every test then weighs the same).
    pub fn fallback_ms(&self) -> f64 {
        self.mean_of_known().unwrap_or(1.0)
    }

    /// The estimates of one matrix combination: the ids qualified with `variant` (see
    /// [`crate::qualify`]) without the suffix, and the shard start cost. The whole history
    /// for the empty variant (a workflow without matrix).
    pub fn for_variant(&self, variant: &str) -> History {
        if variant.is_empty() {
            return self.clone();
        }
        History {
            by_id: self
                .by_id
                .iter()
                .filter_map(|(id, e)| {
                    crate::unqualify(id, variant).map(|raw| (raw.to_string(), *e))
                })
                .collect(),
            shard_start_ms: self.shard_start_ms,
        }
    }

    /// The planning estimate of `id`: its mean when known, otherwise `fallback`.
    pub fn estimate_ms(&self, id: &str, fallback: f64) -> f64 {
        self.get(id).map_or(fallback, |e| e.mean_ms)
    }
}

impl FromIterator<(TestId, Estimate)> for History {
    fn from_iter<I: IntoIterator<Item = (TestId, Estimate)>>(iter: I) -> Self {
        let mut history = History::new();
        for (id, estimate) in iter {
            history.insert(id, estimate);
        }
        history
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_known_ignores_unusable_estimates() {
        let h: History = [
            ("a".to_owned(), Estimate::exact(10.0)),
            ("b".to_owned(), Estimate::exact(30.0)),
            ("c".to_owned(), Estimate::exact(f64::NAN)),
            ("d".to_owned(), Estimate::exact(-1.0)),
        ]
        .into_iter()
        .collect();
        assert_eq!(h.len(), 2);
        assert_eq!(h.mean_of_known(), Some(20.0));
        assert_eq!(h.estimate_ms("a", 5.0), 10.0);
        assert_eq!(h.estimate_ms("c", 5.0), 5.0);
        assert_eq!(History::new().mean_of_known(), None);
        assert_eq!(History::new().fallback_ms(), 1.0);
    }
}
