//! The fault schedule: which fault, when, and for how long, drawn from the seed before the
//! run starts, so the same seed injects the same faults at the same offsets.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A process of the stack the harness can hurt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    TriggerWatcher,
    Scheduler,
    Launcher,
    Aggregator,
    Nats,
}

pub const SERVICES: [Target; 4] = [
    Target::TriggerWatcher,
    Target::Scheduler,
    Target::Launcher,
    Target::Aggregator,
];

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::TriggerWatcher => "trigger-watcher",
            Target::Scheduler => "scheduler",
            Target::Launcher => "executor-launcher",
            Target::Aggregator => "result-aggregator",
            Target::Nats => "nats-server",
        }
    }
}

/// One kind of fault. The `Display` form is the row of the fault table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// SIGKILL of a service; it is started again after a short delay (a crash and a
    /// supervisor restart).
    Kill(Target),
    /// SIGSTOP for longer than the consumers' ack wait, then SIGCONT (a frozen VM, a long
    /// GC pause, a stalled disk).
    Pause(Target),
    /// nats-server killed (SIGKILL) and started again on the same port and store directory.
    NatsRestart,
    /// The aggregator's database file, its WAL and its directory made immutable
    /// (`chattr +i`): every write fails with an I/O error, even through open descriptors.
    DbUnwritable,
    /// The launcher and every runner it started killed at once (the machine running them
    /// disappears); the launcher comes back as a new machine would.
    MachineLoss,
    /// SIGKILL of one live runner process (OOM killer, a crashed runner).
    RunnerKill,
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Kill(t) => write!(f, "kill -9 {}", t.name()),
            Kind::Pause(t) => write!(f, "SIGSTOP > ack wait, SIGCONT {}", t.name()),
            Kind::NatsRestart => write!(f, "nats-server kill -9 + restart (same port, store)"),
            Kind::DbUnwritable => write!(f, "aggregator database unwritable (chattr +i)"),
            Kind::MachineLoss => write!(f, "machine loss (launcher + all its runners -9)"),
            Kind::RunnerKill => write!(f, "kill -9 one assay-runner"),
        }
    }
}

/// A fault at an offset from the start of the fault phase. `hold` is how long the process
/// stays down (kill, restart), stopped (pause) or the file immutable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    pub at: Duration,
    pub kind: Kind,
    pub hold: Duration,
    /// A number the injector uses to pick among live targets (which runner to kill).
    pub pick: u64,
}

/// What the schedule is drawn from.
#[derive(Debug, Clone)]
pub struct Shape {
    pub faults: usize,
    /// Mean gap between two faults (gaps are uniform in 0.2..1.8 times it).
    pub mean_gap: Duration,
    /// SIGSTOP length range; its lower end must exceed the consumers' ack wait (30 s).
    pub pause: (Duration, Duration),
    /// How long the database stays unwritable.
    pub unwritable: (Duration, Duration),
    /// Whether `chattr +i` works here (it needs CAP_LINUX_IMMUTABLE and ext2/3/4, xfs, btrfs).
    pub db_fault: bool,
}

/// Draws the schedule. Pauses never overlap on the same service and at most one database
/// fault is active at a time: the draw is repeated while it would.
pub fn schedule(seed: u64, shape: &Shape) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xfa01_7000_0000_0001);
    let mut kinds = Vec::new();
    for t in SERVICES {
        kinds.push((Kind::Kill(t), 3u32));
        kinds.push((Kind::Pause(t), 1));
    }
    kinds.push((Kind::NatsRestart, 3));
    kinds.push((Kind::MachineLoss, 1));
    kinds.push((Kind::RunnerKill, 3));
    if shape.db_fault {
        kinds.push((Kind::DbUnwritable, 2));
    }
    let total: u32 = kinds.iter().map(|k| k.1).sum();
    let mut busy_until: std::collections::HashMap<Kind, Duration> = Default::default();
    let mut at = Duration::ZERO;
    let mut out = Vec::with_capacity(shape.faults);
    let gap_ms = shape.mean_gap.as_millis().max(1) as u64;
    while out.len() < shape.faults {
        at += Duration::from_millis(rng.random_range(gap_ms / 5..=gap_ms * 9 / 5));
        let kind = loop {
            let mut r = rng.random_range(0..total);
            let mut chosen = kinds[0].0;
            for (k, w) in &kinds {
                if r < *w {
                    chosen = *k;
                    break;
                }
                r -= w;
            }
            let exclusive = matches!(chosen, Kind::Pause(_) | Kind::DbUnwritable);
            if !exclusive || busy_until.get(&chosen).is_none_or(|u| *u <= at) {
                break chosen;
            }
        };
        let hold = match kind {
            Kind::Pause(_) => between(&mut rng, shape.pause),
            Kind::DbUnwritable => between(&mut rng, shape.unwritable),
            Kind::Kill(_) | Kind::MachineLoss => Duration::from_millis(rng.random_range(0..3000)),
            Kind::NatsRestart => Duration::from_millis(rng.random_range(0..2000)),
            Kind::RunnerKill => Duration::ZERO,
        };
        if matches!(kind, Kind::Pause(_) | Kind::DbUnwritable) {
            busy_until.insert(kind, at + hold);
        }
        out.push(Fault {
            at,
            kind,
            hold,
            pick: rng.random(),
        });
    }
    out
}

/// A targeted scenario: one fault at a chosen moment of one execution, on the quiet stack
/// after the random fault phase (nothing else disturbs it, so what it checks is attributable
/// and what it measures is not blurred by other faults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// nats-server killed (-9) and restarted on the same store while live runners hold
    /// queue batches that run longer than their lease: no batch may run twice.
    HeldBatches,
    /// The launcher killed (-9) mid-run (its runners stop when they see it gone); the
    /// replacement must hand the orphaned shards out again within 5 s of starting.
    LauncherReplaced,
    /// The scheduler stopped right after its first shard job of an execution went out and
    /// killed (-9) before the plan record: the re-plan keeps the original creation time.
    SchedulerBeforePlan,
}

pub const SCENARIOS: [Scenario; 3] = [
    Scenario::HeldBatches,
    Scenario::LauncherReplaced,
    Scenario::SchedulerBeforePlan,
];

impl Scenario {
    /// The name `--scenarios` takes.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::HeldBatches => "held-batches",
            Scenario::LauncherReplaced => "launcher-replaced",
            Scenario::SchedulerBeforePlan => "scheduler-before-plan",
        }
    }

    pub fn parse(name: &str) -> Result<Scenario, String> {
        SCENARIOS
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| {
                format!(
                    "unknown scenario {name:?} (known: {})",
                    SCENARIOS.map(Scenario::name).join(", ")
                )
            })
    }
}

impl std::fmt::Display for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scenario::HeldBatches => write!(f, "nats-server -9/restart, queue batches held"),
            Scenario::LauncherReplaced => write!(f, "kill -9 executor-launcher mid-run, replaced"),
            Scenario::SchedulerBeforePlan => {
                write!(f, "kill -9 scheduler: first job out, plan not")
            }
        }
    }
}

/// One round of a scenario. `after` is how long after the execution is under way the fault
/// comes (held batches: after its first batch started; launcher: after all its shards
/// run), `hold` how long the process stays down.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    pub scenario: Scenario,
    pub after: Duration,
    pub hold: Duration,
}

/// `per` rounds of each scenario, interleaved, drawn from the seed.
pub fn rounds(seed: u64, scenarios: &[Scenario], per: usize) -> Vec<Round> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5ce0_a210_0000_0003);
    let mut out = Vec::with_capacity(per * scenarios.len());
    for _ in 0..per {
        for &scenario in scenarios {
            let ms = |rng: &mut StdRng, lo: u64, hi: u64| {
                Duration::from_millis(rng.random_range(lo..=hi))
            };
            let (after, hold) = match scenario {
                // While the first batches (4 s each) run, past their 2 s lease (renewed).
                Scenario::HeldBatches => (ms(&mut rng, 2500, 3500), ms(&mut rng, 0, 1500)),
                // Down for less or more than the heartbeat expiry (3 s).
                Scenario::LauncherReplaced => (ms(&mut rng, 500, 2000), ms(&mut rng, 0, 4000)),
                Scenario::SchedulerBeforePlan => (Duration::ZERO, ms(&mut rng, 1000, 3000)),
            };
            out.push(Round {
                scenario,
                after,
                hold,
            });
        }
    }
    out
}

fn between(rng: &mut StdRng, (lo, hi): (Duration, Duration)) -> Duration {
    let (lo, hi) = (
        lo.as_millis() as u64,
        hi.as_millis().max(lo.as_millis()) as u64,
    );
    Duration::from_millis(rng.random_range(lo..=hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape() -> Shape {
        Shape {
            faults: 500,
            mean_gap: Duration::from_secs(1),
            pause: (Duration::from_secs(31), Duration::from_secs(40)),
            unwritable: (Duration::from_secs(5), Duration::from_secs(30)),
            db_fault: true,
        }
    }

    #[test]
    fn same_seed_same_schedule() {
        assert_eq!(schedule(7, &shape()), schedule(7, &shape()));
        assert_ne!(schedule(7, &shape()), schedule(8, &shape()));
    }

    #[test]
    fn every_kind_appears_and_pauses_do_not_overlap() {
        let s = schedule(1, &shape());
        assert_eq!(s.len(), 500);
        for t in SERVICES {
            assert!(s.iter().any(|f| f.kind == Kind::Kill(t)));
        }
        for kind in [Kind::NatsRestart, Kind::DbUnwritable, Kind::MachineLoss] {
            assert!(s.iter().any(|f| f.kind == kind), "{kind} missing");
        }
        for t in SERVICES {
            let pauses: Vec<_> = s.iter().filter(|f| f.kind == Kind::Pause(t)).collect();
            for w in pauses.windows(2) {
                assert!(w[0].at + w[0].hold <= w[1].at);
            }
            assert!(pauses.iter().all(|p| p.hold > Duration::from_secs(30)));
        }
    }

    #[test]
    fn rounds_are_seeded_and_cover_every_scenario() {
        assert_eq!(rounds(3, &SCENARIOS, 4), rounds(3, &SCENARIOS, 4));
        assert_ne!(rounds(3, &SCENARIOS, 4), rounds(4, &SCENARIOS, 4));
        let r = rounds(3, &SCENARIOS, 4);
        assert_eq!(r.len(), 12);
        for s in SCENARIOS {
            assert_eq!(r.iter().filter(|x| x.scenario == s).count(), 4);
            assert_eq!(Scenario::parse(s.name()), Ok(s));
        }
        assert!(
            r.iter()
                .filter(|x| x.scenario == Scenario::HeldBatches)
                .all(|x| x.after > Duration::from_secs(2))
        );
        assert!(Scenario::parse("nope").is_err());
    }
}
