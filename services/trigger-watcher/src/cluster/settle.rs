//! The settle window: a burst of changes of one object yields one event, once the object
//! has been quiet for the window. A pure state machine: the caller passes the time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Pending keys (typically trigger and object uid) and when each falls due.
///
/// [`observe`](Debouncer::observe) a key at every change; it falls due `window` after
/// its last change. [`due`](Debouncer::due) hands out each due key once and forgets it, so
/// a key is handed out again only after a new change. At most `capacity` keys wait: when
/// a new key would exceed it, the key due soonest is handed out early by `observe` (the
/// caller fires it at once rather than losing it).
#[derive(Debug, Clone)]
pub struct Debouncer<K> {
    deadlines: BTreeMap<K, Instant>,
    capacity: usize,
}

impl<K: Ord + Clone> Debouncer<K> {
    /// A debouncer holding at most `capacity` (at least 1) pending keys.
    pub fn new(capacity: usize) -> Self {
        Debouncer {
            deadlines: BTreeMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// Records a change of `key` at `now`: it falls due at `now + window`, moving any
    /// earlier deadline later. Returns a key that had to make room, due at once.
    pub fn observe(&mut self, key: K, now: Instant, window: Duration) -> Option<K> {
        let deadline = now + window;
        if let Some(d) = self.deadlines.get_mut(&key) {
            *d = deadline;
            return None;
        }
        let evicted = if self.deadlines.len() >= self.capacity {
            let soonest = self
                .deadlines
                .iter()
                .min_by_key(|(k, d)| (**d, (*k).clone()))
                .map(|(k, _)| k.clone());
            soonest.inspect(|k| {
                self.deadlines.remove(k);
            })
        } else {
            None
        };
        self.deadlines.insert(key, deadline);
        evicted
    }

    /// The keys due at `now` (quiet for their whole window), soonest first; each is
    /// forgotten as it is handed out.
    pub fn due(&mut self, now: Instant) -> Vec<K> {
        let mut ready: Vec<(Instant, K)> = self
            .deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(k, d)| (*d, k.clone()))
            .collect();
        ready.sort();
        for (_, k) in &ready {
            self.deadlines.remove(k);
        }
        ready.into_iter().map(|(_, k)| k).collect()
    }

    /// When the next key falls due, for the caller's timer.
    pub fn next_due(&self) -> Option<Instant> {
        self.deadlines.values().min().copied()
    }

    /// Drops a key without handing it out (its object was deleted, its trigger removed).
    pub fn forget(&mut self, key: &K) {
        self.deadlines.remove(key);
    }

    /// How many keys wait.
    pub fn len(&self) -> usize {
        self.deadlines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deadlines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const WINDOW: Duration = Duration::from_secs(10);

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn a_burst_of_ten_within_the_window_yields_one() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(100);
        for i in 0..10 {
            assert_eq!(d.observe("payments", t0 + secs(i), WINDOW), None);
            assert!(d.due(t0 + secs(i)).is_empty(), "due during the burst");
        }
        // Last change at 9s: quiet until 19s.
        assert!(d.due(t0 + secs(18)).is_empty());
        assert_eq!(d.next_due(), Some(t0 + secs(19)));
        assert_eq!(d.due(t0 + secs(19)), ["payments"]);
        assert!(d.due(t0 + secs(100)).is_empty(), "handed out once");
        assert!(d.is_empty());
    }

    #[test]
    fn two_bursts_further_apart_than_the_window_yield_two() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(100);
        let mut out = Vec::new();
        for t in [0, 2, 4, 30, 31, 33] {
            out.extend(d.due(t0 + secs(t)));
            d.observe("payments", t0 + secs(t), WINDOW);
        }
        out.extend(d.due(t0 + secs(60)));
        assert_eq!(out, ["payments", "payments"]);
    }

    #[test]
    fn keys_settle_on_their_own_and_a_zero_window_is_due_at_once() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(100);
        d.observe("a", t0, WINDOW);
        d.observe("b", t0 + secs(5), WINDOW);
        d.observe("now", t0 + secs(6), Duration::ZERO);
        assert_eq!(d.due(t0 + secs(6)), ["now"]);
        assert_eq!(d.due(t0 + secs(12)), ["a"]);
        d.forget(&"b");
        assert!(d.due(t0 + secs(20)).is_empty());
    }

    #[test]
    fn a_full_debouncer_hands_out_the_soonest_key_early() {
        let t0 = Instant::now();
        let mut d = Debouncer::new(2);
        assert_eq!(d.observe("a", t0, WINDOW), None);
        assert_eq!(d.observe("b", t0 + secs(1), WINDOW), None);
        assert_eq!(
            d.observe("a", t0 + secs(2), WINDOW),
            None,
            "known key: no room needed"
        );
        assert_eq!(d.observe("c", t0 + secs(3), WINDOW), Some("b"));
        assert_eq!(d.len(), 2);
        assert_eq!(d.due(t0 + secs(60)), ["a", "c"]);
    }

    proptest! {
        /// Whatever the interleaving of changes and polls: a key is handed out at most once
        /// per quiet period (never twice without a change in between), only after it was
        /// quiet for the whole window, and every change is eventually followed by one.
        #[test]
        fn one_event_per_quiet_period(
            ops in proptest::collection::vec((0u8..3, any::<bool>(), 0u64..15), 1..80),
            window in 0u64..10,
        ) {
            let t0 = Instant::now();
            let window = secs(window);
            let mut d = Debouncer::new(100);
            let mut now = t0;
            // Per key: time of the last change, and whether a change awaits its event.
            let mut last: BTreeMap<u8, Instant> = BTreeMap::new();
            let mut pending: BTreeMap<u8, bool> = BTreeMap::new();
            for (key, is_change, step) in ops {
                now += secs(step);
                if is_change {
                    prop_assert_eq!(d.observe(key, now, window), None);
                    last.insert(key, now);
                    pending.insert(key, true);
                } else {
                    for k in d.due(now) {
                        prop_assert!(pending.get(&k) == Some(&true), "{} handed out twice", k);
                        prop_assert!(now >= last[&k] + window, "{} handed out before it was quiet", k);
                        pending.insert(k, false);
                    }
                }
            }
            for k in d.due(now + window) {
                prop_assert!(pending.get(&k) == Some(&true), "{} handed out twice", k);
                pending.insert(k, false);
            }
            prop_assert!(pending.values().all(|p| !p), "a change never fired: {:?}", pending);
        }
    }
}
