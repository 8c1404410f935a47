//! Static plans: the `count` baseline, the `duration` (LPT) plan and its per-runner share,
//! the consistent hash for tests a plan does not know, and the automatic shard count.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::{Error, History, Ms, Result, TestId};

/// Lower bound on the makespan of `durations` over `m` workers:
/// `LB = max(sum(d) / m, max(d))` (0 for no tests).
pub fn lower_bound(durations: &[f64], m: usize) -> f64 {
    let m = m.max(1);
    let sum: f64 = durations.iter().sum();
    let longest = durations.iter().copied().fold(0.0, f64::max);
    (sum / m as f64).max(longest)
}

/// Contiguous split of `n` tests (by position `0..n`) into `m` shards whose sizes differ by at
/// most one, order preserved; the first `n % m` shards get the extra test. Returns the test
/// positions of each shard (`m` shards, trailing ones empty when `n < m`).
pub fn count_split(n: usize, m: usize) -> Vec<Vec<usize>> {
    let m = m.max(1);
    let base = n / m;
    let extra = n % m;
    (0..m)
        .map(|i| {
            let start = i * base + i.min(extra);
            let size = base + usize::from(i < extra);
            (start..start + size).collect()
        })
        .collect()
}

/// A frozen `duration` plan: `shards[i]` runs on runner `i`, expected to take
/// `expected_ms[i]` (sum of its tests' estimates).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub shards: Vec<Vec<TestId>>,
    pub expected_ms: Vec<f64>,
}

impl Plan {
    /// The longest shard's expected run time (0 for an empty plan).
    pub fn makespan_ms(&self) -> f64 {
        self.expected_ms.iter().copied().fold(0.0, f64::max)
    }

    /// The shard the plan assigns `id` to (the first one, should a hand-made plan list it
    /// twice).
    pub fn shard_of(&self, id: &str) -> Option<usize> {
        self.shards
            .iter()
            .position(|shard| shard.iter().any(|t| t == id))
    }

    /// Id to shard for every test of the plan; the first shard wins for duplicates, exactly
    /// like [`Plan::shard_of`].
    fn owners(&self) -> HashMap<&str, usize> {
        let mut owners = HashMap::new();
        for (i, shard) in self.shards.iter().enumerate() {
            for id in shard {
                owners.entry(id.as_str()).or_insert(i);
            }
        }
        owners
    }
}

/// The listed tests, deduplicated, with their planning estimate, longest first (ties by id):
/// the order LPT and the queue serve tests in. Independent of the order of `tests`.
pub(crate) fn lpt_order<'a>(tests: &'a [TestId], history: &History) -> Vec<(&'a str, f64)> {
    let fallback = history.fallback_ms();
    let mut seen = HashSet::with_capacity(tests.len());
    let mut order: Vec<(&str, f64)> = tests
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .map(|id| (id.as_str(), history.estimate_ms(id, fallback)))
        .collect();
    order.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    order
}

/// Longest-processing-time-first: tests sorted by estimate, longest first (ties by id), each
/// assigned to the least-loaded shard (ties: lowest index). Unknown tests weigh the mean of
/// the known ones (1.0 when none is known, which makes the plan round-robin by id). Duplicate
/// ids are planned once. The same set of tests gives the same plan whatever their order.
pub fn lpt(tests: &[TestId], history: &History, m: usize) -> Plan {
    assign(&lpt_order(tests, history), m)
}

pub(crate) fn assign(order: &[(&str, f64)], m: usize) -> Plan {
    let m = m.max(1);
    let mut shards = vec![Vec::new(); m];
    let mut expected_ms = vec![0.0; m];
    let mut least: BinaryHeap<Reverse<(Ms, usize)>> =
        (0..m).map(|i| Reverse((Ms(0.0), i))).collect();
    for &(id, estimate) in order {
        let mut top = least.peek_mut().expect("the heap holds m >= 1 shards");
        let Reverse((Ms(load), i)) = *top;
        shards[i].push(id.to_owned());
        expected_ms[i] = load + estimate;
        *top = Reverse((Ms(load + estimate), i));
    }
    Plan {
        shards,
        expected_ms,
    }
}

/// Consistent shard for a test the plan does not know: a stable 64-bit hash of the id
/// (FNV-1a over its UTF-8 bytes, then the murmur3 64-bit finalizer to mix the low bits)
/// modulo `m`. Fixed across processes, platforms and versions: runners must agree on it.
pub fn hash_shard(id: &str, m: usize) -> usize {
    let m = m.max(1) as u64;
    (stable_hash(id) % m) as usize
}

pub fn stable_hash(id: &str) -> u64 {
    let mut h = fnv1a(id);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn fnv1a(id: &str) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    id.bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// What runner `index` of `plan.shards.len()` runs in `duration` mode: the listed tests the
/// plan assigns it, plus the listed tests the plan does not know whose [`hash_shard`] is
/// `index`; in listing order, duplicates once. When every runner sees the same plan and the
/// same listing, every listed test lands on exactly one runner (tests the plan knows but the
/// listing lacks are not run).
pub fn duration_share(listed: &[TestId], plan: &Plan, index: usize) -> Vec<TestId> {
    let owners = plan.owners();
    let m = plan.shards.len();
    let mut seen = HashSet::with_capacity(listed.len());
    listed
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .filter(|id| {
            owners
                .get(id.as_str())
                .copied()
                .unwrap_or_else(|| hash_shard(id, m))
                == index
        })
        .cloned()
        .collect()
}

/// [`duration_share`] as a runner computes it from what its shard job carries: its own
/// planned tests and the [`stable_hash`] of every planned test of any shard. A listed test
/// runs here when the plan gave it to this shard, or when no shard was planned for it and its
/// [`hash_shard`] is `index`. Listing order, duplicates once.
pub fn share_from_hashes(
    listed: &[TestId],
    own: &[TestId],
    planned: &HashSet<u64>,
    index: usize,
    m: usize,
) -> Vec<TestId> {
    let own: HashSet<&str> = own.iter().map(String::as_str).collect();
    let mut seen = HashSet::with_capacity(listed.len());
    listed
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .filter(|id| {
            own.contains(id.as_str())
                || (!planned.contains(&stable_hash(id)) && hash_shard(id, m) == index)
        })
        .cloned()
        .collect()
}

/// Automatic shard count (`count: auto`): the smallest `m` in `1..=max_count` whose LPT plan
/// meets `target_ms` once the per-shard start cost is added
/// (`makespan + per_shard_start_ms <= target_ms`); `max_count` when none does. A negative or
/// NaN start cost counts as 0.
pub fn auto_count(
    tests: &[TestId],
    history: &History,
    target_ms: f64,
    max_count: usize,
    per_shard_start_ms: f64,
) -> Result<usize> {
    if max_count == 0 {
        return Err(Error::ZeroMaxCount);
    }
    if !(target_ms.is_finite() && target_ms > 0.0) {
        return Err(Error::InvalidTarget(target_ms));
    }
    let start = per_shard_start_ms.max(0.0);
    let order = lpt_order(tests, history);
    let estimates: Vec<f64> = order.iter().map(|&(_, e)| e).collect();
    // Beyond one shard per test every plan is the same, so no larger m can do better.
    let useful = max_count.min(order.len().max(1));
    for m in 1..=useful {
        if lower_bound(&estimates, m) + start > target_ms {
            continue;
        }
        if assign(&order, m).makespan_ms() + start <= target_ms {
            return Ok(m);
        }
    }
    Ok(max_count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Estimate;
    use crate::test_support::{history, ids};
    use proptest::prelude::*;

    #[test]
    fn lower_bound_examples() {
        assert_eq!(lower_bound(&[], 4), 0.0);
        assert_eq!(lower_bound(&[1.0, 1.0, 1.0, 1.0], 2), 2.0);
        assert_eq!(lower_bound(&[10.0, 1.0, 1.0], 2), 10.0);
        assert_eq!(lower_bound(&[3.0, 3.0], 0), 6.0);
    }

    #[test]
    fn count_split_examples() {
        assert_eq!(count_split(5, 2), vec![vec![0, 1, 2], vec![3, 4]]);
        assert_eq!(count_split(1, 3), vec![vec![0], vec![], vec![]]);
        assert_eq!(count_split(2, 0), vec![vec![0, 1]]);
    }

    #[test]
    fn lpt_example() {
        // 4 tests, 2 shards: LPT gives {7, 3} and {5, 4} -> makespan 10.
        let d = [7.0, 5.0, 4.0, 3.0];
        let plan = lpt(&ids(4), &history(&d), 2);
        assert_eq!(
            plan.shards,
            vec![vec!["t000", "t003"], vec!["t001", "t002"]]
        );
        assert_eq!(plan.expected_ms, vec![10.0, 9.0]);
        assert_eq!(plan.makespan_ms(), 10.0);
        assert_eq!(plan.shard_of("t002"), Some(1));
        assert_eq!(plan.shard_of("nope"), None);
    }

    #[test]
    fn lpt_unknown_tests_get_the_mean() {
        let h = history(&[10.0, 20.0]);
        let mut tests = ids(2);
        tests.push("new".to_owned());
        let plan = lpt(&tests, &h, 3);
        // new weighs 15: t001 (20) on shard 0, new (15) on shard 1, t000 (10) on shard 2.
        assert_eq!(plan.shards, vec![vec!["t001"], vec!["new"], vec!["t000"]]);
        assert_eq!(plan.expected_ms, vec![20.0, 15.0, 10.0]);
    }

    #[test]
    fn lpt_without_history_is_round_robin_by_id() {
        let tests: Vec<TestId> = ["d", "a", "c", "b", "e"].map(String::from).to_vec();
        let plan = lpt(&tests, &History::new(), 2);
        assert_eq!(plan.shards, vec![vec!["a", "c", "e"], vec!["b", "d"]]);
        assert_eq!(plan.expected_ms, vec![3.0, 2.0]);
    }

    #[test]
    fn lpt_plans_duplicates_once() {
        let tests: Vec<TestId> = ["a", "b", "a"].map(String::from).to_vec();
        let plan = lpt(&tests, &History::new(), 4);
        assert_eq!(plan.shards.iter().flatten().count(), 2);
    }

    #[test]
    fn hash_shard_is_pinned() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a("foobar"), 0x8594_4171_f739_67e8);
        // These values are a cross-version contract: runners of different versions must agree.
        let pinned: Vec<usize> = ["a", "b", "pkg::test_one", "pkg::test_two", ""]
            .iter()
            .map(|id| hash_shard(id, 1000))
            .collect();
        assert_eq!(pinned, PINNED.to_vec());
        assert_eq!(hash_shard("anything", 0), 0);
        assert_eq!(hash_shard("anything", 1), 0);
    }

    const PINNED: [usize; 5] = [315, 704, 800, 110, 342];

    #[test]
    fn hash_shard_spreads_evenly() {
        let m = 8;
        let mut counts = vec![0usize; m];
        for i in 0..8000 {
            counts[hash_shard(&format!("tests/test_{i}"), m)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn duration_share_places_unknown_tests_by_hash() {
        let plan = lpt(&ids(4), &history(&[7.0, 5.0, 4.0, 3.0]), 2);
        let mut listed = ids(4);
        listed.extend(["new_a", "new_b", "t001"].map(String::from));
        let shares: Vec<Vec<TestId>> = (0..2).map(|i| duration_share(&listed, &plan, i)).collect();
        assert_eq!(shares[0][..2], ["t000", "t003"]);
        assert_eq!(shares[1][..2], ["t001", "t002"]);
        assert_eq!(shares.iter().flatten().count(), 6);
        for new in ["new_a", "new_b"] {
            assert!(shares[hash_shard(new, 2)].iter().any(|t| t == new));
        }
        // A test dropped from the listing is not run.
        let fewer = ids(3);
        assert!((0..2).all(|i| !duration_share(&fewer, &plan, i).contains(&"t003".to_owned())));
    }

    #[test]
    fn auto_count_picks_the_smallest_count_meeting_the_target() {
        let d = vec![10.0; 8];
        let h = history(&d);
        let t = ids(8);
        // m=4: makespan 20 + start 5 = 25.
        assert_eq!(auto_count(&t, &h, 25.0, 10, 5.0), Ok(4));
        assert_eq!(auto_count(&t, &h, 24.0, 10, 5.0), Ok(8));
        assert_eq!(auto_count(&t, &h, 100.0, 10, 0.0), Ok(1));
        // Unreachable target (longest test 10 + start 5 > 12): max_count.
        assert_eq!(auto_count(&t, &h, 12.0, 1000, 5.0), Ok(1000));
        assert_eq!(auto_count(&t, &h, 12.0, 0, 5.0), Err(Error::ZeroMaxCount));
        assert!(matches!(
            auto_count(&t, &h, f64::NAN, 3, 5.0),
            Err(Error::InvalidTarget(_))
        ));
        assert_eq!(auto_count(&[], &h, 1.0, 5, 0.0), Ok(1));
    }

    fn arb_suite() -> impl Strategy<Value = (Vec<TestId>, History)> {
        proptest::collection::vec(("[a-f]{1,3}", proptest::option::of(0.0f64..1000.0)), 0..60)
            .prop_map(|entries| {
                let tests: Vec<TestId> = entries.iter().map(|(id, _)| id.clone()).collect();
                let history = entries
                    .iter()
                    .filter_map(|(id, d)| d.map(|d| (id.clone(), Estimate::exact(d))))
                    .collect();
                (tests, history)
            })
    }

    fn sorted_unique(tests: &[TestId]) -> Vec<TestId> {
        let mut v = tests.to_vec();
        v.sort();
        v.dedup();
        v
    }

    proptest! {
        #[test]
        fn count_split_assigns_every_test_once(n in 0usize..500, m in 0usize..40) {
            let shards = count_split(n, m);
            prop_assert_eq!(shards.len(), m.max(1));
            let flat: Vec<usize> = shards.iter().flatten().copied().collect();
            prop_assert_eq!(flat, (0..n).collect::<Vec<_>>());
            let sizes: Vec<usize> = shards.iter().map(Vec::len).collect();
            let spread = sizes.iter().max().unwrap() - sizes.iter().min().unwrap();
            prop_assert!(spread <= 1);
            prop_assert_eq!(count_split(n, m), shards);
        }

        #[test]
        fn lpt_assigns_every_test_once_deterministically(
            (tests, history) in arb_suite(),
            m in 0usize..12,
            seed in any::<u64>(),
        ) {
            let plan = lpt(&tests, &history, m);
            prop_assert_eq!(plan.shards.len(), m.max(1));
            prop_assert_eq!(plan.expected_ms.len(), m.max(1));
            let mut flat: Vec<TestId> = plan.shards.iter().flatten().cloned().collect();
            flat.sort();
            prop_assert_eq!(flat, sorted_unique(&tests));
            prop_assert_eq!(&lpt(&tests, &history, m), &plan);
            // Independent of input order.
            let mut shuffled = tests.clone();
            shuffle(&mut shuffled, seed);
            prop_assert_eq!(&lpt(&shuffled, &history, m), &plan);
        }

        #[test]
        fn lpt_makespan_is_within_the_graham_bound(
            durations in proptest::collection::vec(0.0f64..10_000.0, 1..80),
            m in 1usize..16,
        ) {
            let plan = lpt(&ids(durations.len()), &history(&durations), m);
            let lb = lower_bound(&durations, m);
            let longest = durations.iter().copied().fold(0.0, f64::max);
            let makespan = plan.makespan_ms();
            let eps = 1e-9 * (1.0 + lb);
            prop_assert!(makespan + eps >= lb, "makespan {} < LB {}", makespan, lb);
            prop_assert!(makespan <= 4.0 / 3.0 * lb + longest + eps);
            // The tighter 4/3 - 1/(3m) factor is against OPT, which LB only bounds from below;
            // list scheduling also guarantees sum/m + longest.
            let sum: f64 = durations.iter().sum();
            prop_assert!(makespan <= sum / m as f64 + longest + eps);
        }

        #[test]
        fn duration_share_runs_every_listed_test_exactly_once(
            (planned, history) in arb_suite(),
            extra in proptest::collection::vec("[a-h]{1,4}", 0..30),
            m in 0usize..10,
        ) {
            let plan = lpt(&planned, &history, m);
            // The listing drops some planned tests and adds new ones.
            let listed: Vec<TestId> = planned.iter().step_by(2).cloned().chain(extra).collect();
            let runners = plan.shards.len();
            let mut ran: Vec<TestId> = (0..runners)
                .flat_map(|i| duration_share(&listed, &plan, i))
                .collect();
            ran.sort();
            prop_assert_eq!(ran, sorted_unique(&listed));
            prop_assert!(duration_share(&listed, &plan, runners).is_empty());
        }

        #[test]
        fn shares_from_hashes_match_the_full_plan(
            (planned, history) in arb_suite(),
            extra in proptest::collection::vec("[a-h]{1,4}", 0..30),
            m in 1usize..10,
        ) {
            let plan = lpt(&planned, &history, m);
            let hashes: HashSet<u64> = plan.shards.iter().flatten().map(|id| stable_hash(id)).collect();
            let listed: Vec<TestId> = planned.iter().step_by(2).cloned().chain(extra).collect();
            for (i, own) in plan.shards.iter().enumerate() {
                prop_assert_eq!(
                    share_from_hashes(&listed, own, &hashes, i, m),
                    duration_share(&listed, &plan, i)
                );
            }
        }

        #[test]
        fn auto_count_meets_the_target_or_gives_max(
            durations in proptest::collection::vec(0.0f64..1000.0, 0..40),
            target in 1.0f64..5000.0,
            max_count in 1usize..20,
        ) {
            let t = ids(durations.len());
            let h = history(&durations);
            let m = auto_count(&t, &h, target, max_count, 10.0).unwrap();
            prop_assert!((1..=max_count).contains(&m));
            if m < max_count || lpt(&t, &h, m).makespan_ms() + 10.0 <= target {
                prop_assert!(lpt(&t, &h, m).makespan_ms() + 10.0 <= target);
                for smaller in 1..m {
                    prop_assert!(lpt(&t, &h, smaller).makespan_ms() + 10.0 > target);
                }
            }
        }
    }

    /// A small deterministic Fisher–Yates for property tests (no RNG dependency needed).
    fn shuffle<T>(v: &mut [T], mut seed: u64) {
        for i in (1..v.len()).rev() {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let j = ((seed >> 33) % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}
