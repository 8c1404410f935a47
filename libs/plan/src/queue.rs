//! The `queue` strategy: batches served longest first, and the lease state machine that hands
//! them out so a dead or stalled worker's batch goes back to the queue and no batch is ever
//! completed twice.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use crate::split::lpt_order;
use crate::{Error, History, Result, TestId};

/// A unit of work in the queue: tests run together by one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// Position in the queue (0 first); unique within one queue.
    pub seq: u32,
    pub tests: Vec<TestId>,
    /// Sum of the tests' estimates.
    pub expected_ms: f64,
}

/// Dispatch overhead stays under 1 % of a batch's run time: batches are at least this many
/// times the per-batch overhead (when durations are known).
pub(crate) const OVERHEAD_FACTOR: f64 = 100.0;
/// A batch's ids take at most this many bytes (each id's length plus its protobuf framing):
/// a batch travels as one message on the work queue, whose limit is 1 MiB. Without it a
/// 100,000-test suite with ids of ~100 characters cut a first batch of ~1.09 MB and the
/// queue could not be filled. 256 KiB is about 2,500 such ids: far above any batch a
/// worker needs for its overhead to stay small.
pub const MAX_BATCH_ID_BYTES: usize = 256 * 1024;

/// The bytes an id adds to a batch message: the id, its field tag and a length prefix.
fn id_bytes(id: &str) -> usize {
    id.len() + 4
}

/// Guided self-scheduling divisor (batch target = remaining / (divisor × m)) with history...
const GSS_DIVISOR: f64 = 2.0;
/// ...and when no test is known (see [`queue_batches`]; measured by `bench-sharding`).
const GSS_DIVISOR_BLIND: f64 = 8.0;

/// The work queue for `m` workers: the tests (deduplicated) in LPT order, longest first, cut
/// into batches like guided self-scheduling. Each batch takes tests in order until its
/// expected time reaches the target `max(per_batch_overhead_ms * 100, remaining / (2m))`,
/// where `remaining` is the expected time of everything not yet batched: early batches are
/// large, the tail is cut finer so the last batches are short, and a test longer than the
/// target is a batch alone. The first term keeps dispatch overhead under 1 % of a batch, but
/// never exceeds the suite's work divided by `m`: a short suite still spreads over every
/// worker rather than landing in one batch.
///
/// When the history knows none of the tests, every test weighs the same and the order says
/// nothing about durations, so one unlucky batch can hold several long tests: the divisor is
/// then `8m` instead of `2m` (still O(m log n) batches). When the history is empty altogether,
/// estimates carry no unit and the overhead floor cannot be judged, so batches are sized by
/// count only (`ceil(remaining tests / 8m)`, down to single tests). A negative or NaN overhead
/// counts as 0. Deterministic, and independent of the order of `tests`.
pub fn queue_batches(
    tests: &[TestId],
    history: &History,
    m: usize,
    per_batch_overhead_ms: f64,
) -> Vec<Batch> {
    cut_batches(tests, history, m, per_batch_overhead_ms, OVERHEAD_FACTOR)
}

/// [`queue_batches`] with batches at least `overhead_factor` times the per-batch overhead
/// (when durations are known) instead of [`OVERHEAD_FACTOR`] times.
pub(crate) fn cut_batches(
    tests: &[TestId],
    history: &History,
    m: usize,
    per_batch_overhead_ms: f64,
    overhead_factor: f64,
) -> Vec<Batch> {
    let m = m.max(1) as f64;
    let order = lpt_order(tests, history);
    let known = order.iter().any(|(id, _)| history.get(id).is_some());
    let divisor = if known {
        GSS_DIVISOR
    } else {
        GSS_DIVISOR_BLIND
    };
    let floor = if history.is_empty() {
        0.0
    } else {
        per_batch_overhead_ms.max(0.0) * overhead_factor
    };
    // remaining[i]: expected time of order[i..], summed from the end so it never drifts.
    let mut remaining = vec![0.0; order.len() + 1];
    for i in (0..order.len()).rev() {
        remaining[i] = remaining[i + 1] + order[i].1;
    }
    // A suite too small to keep the overhead under 1 % on every worker still uses them all:
    // parallelism beats the overhead rule when the whole run is short.
    let cap = remaining[0] / m;
    let mut batches = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let target = floor.min(cap).max(remaining[i] / (divisor * m));
        let mut tests = Vec::new();
        let mut expected_ms = 0.0;
        let mut bytes = 0;
        while i < order.len() {
            let size = id_bytes(order[i].0);
            // Full by size: the next id starts the next batch (a batch has at least one id).
            if !tests.is_empty() && bytes + size > MAX_BATCH_ID_BYTES {
                break;
            }
            tests.push(order[i].0.to_owned());
            expected_ms += order[i].1;
            bytes += size;
            i += 1;
            if expected_ms >= target {
                break;
            }
        }
        batches.push(Batch {
            seq: batches.len() as u32,
            tests,
            expected_ms,
        });
    }
    batches
}

#[derive(Debug, Clone)]
struct Lease {
    worker: String,
    until_ms: u64,
}

/// Lease-based queue state machine, pure: callers pass the time (`now_ms`, any monotonic
/// millisecond clock).
///
/// A batch is pending, leased to one worker until a deadline, or completed. Only the current
/// lease holder can complete it; [`LeaseQueue::expire`] returns batches whose lease ran out to
/// the front of the queue, after which the old holder's completion is rejected. So however
/// workers die or stall, every batch is completed exactly once. Callers report a batch's test
/// results only when [`LeaseQueue::complete`] accepts it.
#[derive(Debug, Clone)]
pub struct LeaseQueue {
    lease_ms: u64,
    batches: BTreeMap<u32, Batch>,
    pending: VecDeque<u32>,
    leases: BTreeMap<u32, Lease>,
    completed: BTreeSet<u32>,
}

impl LeaseQueue {
    /// A queue serving `batches` in the given order, each lease lasting `lease_ms`.
    pub fn new(batches: Vec<Batch>, lease_ms: u64) -> Result<Self> {
        if lease_ms == 0 {
            return Err(Error::ZeroLease);
        }
        let mut by_seq = BTreeMap::new();
        let mut pending = VecDeque::with_capacity(batches.len());
        for batch in batches {
            let seq = batch.seq;
            if by_seq.insert(seq, batch).is_some() {
                return Err(Error::DuplicateBatch(seq));
            }
            pending.push_back(seq);
        }
        Ok(LeaseQueue {
            lease_ms,
            batches: by_seq,
            pending,
            leases: BTreeMap::new(),
            completed: BTreeSet::new(),
        })
    }

    /// Leases the next batch to `worker` until `now_ms + lease`. `None` when nothing is
    /// pending (batches may still be leased: call [`LeaseQueue::expire`] to reclaim stale ones).
    pub fn take(&mut self, worker: &str, now_ms: u64) -> Option<Batch> {
        let seq = self.pending.pop_front()?;
        self.leases.insert(
            seq,
            Lease {
                worker: worker.to_owned(),
                until_ms: now_ms.saturating_add(self.lease_ms),
            },
        );
        self.batches.get(&seq).cloned()
    }

    /// Extends `worker`'s lease on `seq` to `now_ms + lease` (a heartbeat for long batches).
    /// False when `worker` does not hold that lease.
    pub fn renew(&mut self, worker: &str, seq: u32, now_ms: u64) -> bool {
        match self.leases.get_mut(&seq) {
            Some(lease) if lease.worker == worker => {
                lease.until_ms = now_ms.saturating_add(self.lease_ms);
                true
            }
            _ => false,
        }
    }

    /// Marks `seq` done. Accepted (true) only from the current lease holder; a completion for a
    /// batch that is pending, completed, unknown or leased to someone else is rejected.
    pub fn complete(&mut self, worker: &str, seq: u32) -> bool {
        match self.leases.get(&seq) {
            Some(lease) if lease.worker == worker => {
                self.leases.remove(&seq);
                self.completed.insert(seq);
                true
            }
            _ => false,
        }
    }

    /// Ends every lease whose deadline is at or before `now_ms` and puts those batches back at
    /// the front of the queue in queue order (longest first); returns them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Batch> {
        let expired: Vec<u32> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.until_ms <= now_ms)
            .map(|(&seq, _)| seq)
            .collect();
        for seq in &expired {
            self.leases.remove(seq);
        }
        let mut front: Vec<u32> = expired;
        front.sort_by_key(|seq| self.position(*seq));
        for &seq in front.iter().rev() {
            self.pending.push_front(seq);
        }
        front
            .iter()
            .filter_map(|seq| self.batches.get(seq).cloned())
            .collect()
    }

    /// The earliest lease deadline, if any batch is leased.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.leases.values().map(|l| l.until_ms).min()
    }

    /// Every batch completed: nothing pending, nothing leased.
    pub fn is_drained(&self) -> bool {
        self.pending.is_empty() && self.leases.is_empty()
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    pub fn leased_len(&self) -> usize {
        self.leases.len()
    }

    pub fn completed_len(&self) -> usize {
        self.completed.len()
    }

    /// Queue order of a batch: its rank by seq among all batches.
    fn position(&self, seq: u32) -> usize {
        self.batches.range(..seq).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Estimate;
    use proptest::prelude::*;

    fn suite(durations: &[f64]) -> (Vec<TestId>, History) {
        let tests: Vec<TestId> = (0..durations.len()).map(|i| format!("t{i:03}")).collect();
        let history = tests
            .iter()
            .zip(durations)
            .map(|(id, &d)| (id.clone(), Estimate::exact(d)))
            .collect();
        (tests, history)
    }

    #[test]
    fn batches_of_a_large_suite_stay_under_the_message_limit() {
        // 100,000 ids of ~100 characters, a tenth of them known: the first batch by time
        // alone would hold ~12,500 ids (about 1.3 MB, over the queue's 1 MiB limit).
        let tests: Vec<TestId> = (0..100_000)
            .map(|i| format!("tests/unit/pkg/test_module_{:04}.py::TestCase::test_value[param-{i:06}-{}]", i % 4999, "x".repeat(i % 21)))
            .collect();
        let history: History = tests
            .iter()
            .step_by(10)
            .map(|t| (t.clone(), Estimate::exact(1.0)))
            .collect();
        for history in [History::new(), history] {
            let batches = queue_batches(&tests, &history, 4, 5.0);
            let largest = batches
                .iter()
                .map(|b| b.tests.iter().map(|t| id_bytes(t)).sum::<usize>())
                .max()
                .unwrap_or(0);
            assert!(largest <= MAX_BATCH_ID_BYTES, "largest batch {largest} bytes");
            assert_eq!(batches.iter().map(|b| b.tests.len()).sum::<usize>(), tests.len());
        }
    }

    #[test]
    fn a_short_suite_still_spreads_over_every_worker() {
        // 13 tests of 20 ms with 100 ms per batch: the 1 % rule would ask for 10 s batches,
        // one batch in all; capped at the work per worker instead.
        let (tests, history) = suite(&[20.0; 13]);
        let batches = queue_batches(&tests, &history, 2, 100.0);
        assert!(batches.len() >= 2, "{batches:?}");
        assert!(
            batches.iter().all(|b| b.expected_ms <= 130.0 + 20.0),
            "{batches:?}"
        );
    }

    #[test]
    fn batches_are_longest_first_and_shrink_towards_the_tail() {
        let durations: Vec<f64> = (0..400).map(|i| 1000.0 + f64::from(i)).collect();
        let (tests, history) = suite(&durations);
        let batches = queue_batches(&tests, &history, 4, 5.0);
        assert_eq!(batches.first().map(|b| b.tests[0].as_str()), Some("t399"));
        for (i, b) in batches.iter().enumerate() {
            assert_eq!(b.seq as usize, i);
            // 1 % rule: every batch but possibly the very last is at least 500 ms.
            if i + 1 < batches.len() {
                assert!(b.expected_ms >= 500.0, "{b:?}");
            }
        }
        let sizes: Vec<usize> = batches.iter().map(|b| b.tests.len()).collect();
        assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{sizes:?}");
        assert!(sizes[0] > 30, "{sizes:?}");
        assert_eq!(*sizes.last().unwrap(), 1);
    }

    #[test]
    fn a_test_longer_than_the_target_is_a_batch_alone() {
        let (tests, history) = suite(&[100_000.0, 10.0, 10.0, 10.0]);
        let batches = queue_batches(&tests, &history, 2, 5.0);
        assert_eq!(batches[0].tests, vec!["t000"]);
        assert_eq!(batches[1].tests.len(), 3);
    }

    #[test]
    fn without_history_batches_by_count() {
        let tests: Vec<TestId> = (0..100).map(|i| format!("t{i:03}")).collect();
        let batches = queue_batches(&tests, &History::new(), 5, 5.0);
        let sizes: Vec<usize> = batches.iter().map(|b| b.tests.len()).collect();
        assert_eq!(sizes[0], 3); // ceil(100 / 40)
        assert_eq!(sizes.iter().sum::<usize>(), 100);
        assert_eq!(*sizes.last().unwrap(), 1);
        assert_eq!(batches[0].tests[0], "t000");
    }

    #[test]
    fn lease_lifecycle() {
        let (tests, history) = suite(&[3000.0, 2000.0, 1000.0]);
        let batches = queue_batches(&tests, &history, 3, 5.0);
        assert_eq!(batches.len(), 3);
        let mut q = LeaseQueue::new(batches, 100).unwrap();
        let a = q.take("a", 0).unwrap();
        let b = q.take("b", 0).unwrap();
        assert_eq!((a.seq, b.seq), (0, 1));
        assert!(!q.complete("b", 0), "only the holder completes");
        assert!(q.renew("b", 1, 50));
        // At 100, a's lease ends; b's was renewed until 150.
        let expired = q.expire(100);
        assert_eq!(expired.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![0]);
        assert_eq!(
            q.take("c", 100).map(|b| b.seq),
            Some(0),
            "expired goes to the front"
        );
        assert!(!q.complete("a", 0), "a's lease expired and was re-leased");
        assert!(q.complete("c", 0));
        assert!(!q.complete("c", 0), "no double completion");
        assert!(q.complete("b", 1));
        assert_eq!(q.take("a", 200).map(|b| b.seq), Some(2));
        assert!(!q.is_drained());
        assert!(q.complete("a", 2));
        assert!(q.is_drained());
        assert_eq!(q.take("a", 300), None);
        assert_eq!(q.completed_len(), 3);
    }

    #[test]
    fn bad_queues_are_rejected() {
        let batch = Batch {
            seq: 7,
            tests: vec![],
            expected_ms: 0.0,
        };
        assert_eq!(
            LeaseQueue::new(vec![batch.clone(), batch.clone()], 10).unwrap_err(),
            Error::DuplicateBatch(7)
        );
        assert_eq!(
            LeaseQueue::new(vec![batch], 0).unwrap_err(),
            Error::ZeroLease
        );
    }

    /// One step of the random interleaving.
    #[derive(Debug, Clone)]
    enum Op {
        /// Worker takes a batch (if it has none).
        Take(usize),
        /// Worker completes what it holds, or believes it holds.
        Complete(usize),
        /// Worker dies: it forgets its batch and never completes it.
        Die(usize),
        /// Time passes; stale leases are expired.
        Tick(u64),
    }

    fn op(workers: usize) -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0..workers).prop_map(Op::Take),
            4 => (0..workers).prop_map(Op::Complete),
            1 => (0..workers).prop_map(Op::Die),
            2 => (1u64..80).prop_map(Op::Tick),
        ]
    }

    /// Workers driving a [`LeaseQueue`]; a worker that dies comes back under a new name, and
    /// its old self may wake up later ("zombie") and try to complete what it held.
    struct Harness {
        queue: LeaseQueue,
        now: u64,
        holding: Vec<Option<u32>>,
        generation: Vec<u32>,
        zombies: Vec<(String, u32)>,
        accepted: Vec<u32>,
    }

    impl Harness {
        fn name(&self, w: usize) -> String {
            format!("w{w}.{}", self.generation[w])
        }

        fn step(&mut self, op: &Op) {
            let workers = self.holding.len();
            match *op {
                Op::Take(w) => {
                    let w = w % workers;
                    if self.holding[w].is_none() {
                        let name = self.name(w);
                        self.holding[w] = self.queue.take(&name, self.now).map(|b| b.seq);
                    }
                }
                Op::Complete(w) => {
                    let w = w % workers;
                    if let Some(seq) = self.holding[w].take() {
                        let name = self.name(w);
                        if self.queue.complete(&name, seq) {
                            self.accepted.push(seq);
                        }
                    } else if let Some((zombie, seq)) = self.zombies.pop()
                        && self.queue.complete(&zombie, seq)
                    {
                        self.accepted.push(seq);
                    }
                }
                Op::Die(w) => {
                    let w = w % workers;
                    if let Some(seq) = self.holding[w].take() {
                        let name = self.name(w);
                        self.zombies.push((name, seq));
                    }
                    self.generation[w] += 1;
                }
                Op::Tick(dt) => {
                    self.now += dt;
                    self.queue.expire(self.now);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn queue_batches_assigns_every_test_once(
            entries in proptest::collection::vec(("[a-f]{1,3}", proptest::option::of(0.0f64..5000.0)), 0..80),
            m in 0usize..20,
            overhead in 0.0f64..20.0,
        ) {
            let tests: Vec<TestId> = entries.iter().map(|(id, _)| id.clone()).collect();
            let history: History = entries
                .iter()
                .filter_map(|(id, d)| d.map(|d| (id.clone(), Estimate::exact(d))))
                .collect();
            let batches = queue_batches(&tests, &history, m, overhead);
            let mut flat: Vec<TestId> = batches.iter().flat_map(|b| b.tests.clone()).collect();
            flat.sort();
            let mut expected = tests.clone();
            expected.sort();
            expected.dedup();
            prop_assert_eq!(flat, expected);
            prop_assert!(batches.iter().all(|b| !b.tests.is_empty()));
            prop_assert!(batches.iter().all(|b| b.tests.len() == 1
                || b.tests.iter().map(|t| id_bytes(t)).sum::<usize>() <= MAX_BATCH_ID_BYTES));
            prop_assert!(batches.iter().enumerate().all(|(i, b)| b.seq as usize == i));
            prop_assert_eq!(&queue_batches(&tests, &history, m, overhead), &batches);
            let mut reversed = tests.clone();
            reversed.reverse();
            prop_assert_eq!(&queue_batches(&reversed, &history, m, overhead), &batches);
        }

        #[test]
        fn queue_drains_exactly_once_under_worker_deaths(
            n_batches in 0u32..30,
            workers in 1usize..6,
            ops in proptest::collection::vec(op(6), 0..300),
        ) {
            let batches: Vec<Batch> = (0..n_batches)
                .map(|seq| Batch { seq, tests: vec![format!("t{seq}")], expected_ms: 1.0 })
                .collect();
            let lease = 50;
            let mut h = Harness {
                queue: LeaseQueue::new(batches, lease).unwrap(),
                now: 0,
                holding: vec![None; workers],
                generation: vec![0; workers],
                zombies: Vec::new(),
                accepted: Vec::new(),
            };
            for op in &ops {
                h.step(op);
            }
            // Then the survivors finish the job: live workers complete what they hold and take
            // again while time passes (less than a lease per round) so dead workers' leases
            // expire.
            let mut rounds = 0;
            while !h.queue.is_drained() {
                rounds += 1;
                prop_assert!(rounds < 10_000, "queue did not drain");
                for w in 0..workers {
                    h.step(&Op::Complete(w));
                    h.step(&Op::Take(w));
                }
                h.step(&Op::Tick(lease / 2));
            }
            // Late zombies are all rejected once drained.
            for (zombie, seq) in std::mem::take(&mut h.zombies) {
                prop_assert!(!h.queue.complete(&zombie, seq));
            }
            h.accepted.sort_unstable();
            prop_assert_eq!(h.accepted, (0..n_batches).collect::<Vec<_>>());
            prop_assert_eq!(h.queue.completed_len(), n_batches as usize);
        }
    }
}
