//! Shards waiting for a runner. A launcher runs at most `capacity` shards at once (the CPU
//! count by default) and fetches no job beyond that, so the other jobs of a wide workflow
//! stay in the stream, untaken, and would look merely queued. While every runner here is
//! busy, the jobs no launcher has taken yet are announced `waiting for capacity`, once
//! each, with how many runners are busy.
//!
//! The jobs are only read (by stream sequence, past the consumer's delivered sequence),
//! never fetched: nothing is held past the ack wait, and a peer launcher with a free slot
//! still takes them at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use assay_bus::{Bus, streams, subjects};
use assay_proto::{ShardJob, ShardState, ShardStatus};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

/// Jobs read and announced per look, at most.
const MAX_ANNOUNCED_PER_LOOK: usize = 256;

/// Runners busy on this launcher, out of its capacity.
#[derive(Debug)]
pub(crate) struct Busy {
    running: AtomicUsize,
    capacity: usize,
}

/// Held while a job is handled; one runner fewer busy when dropped.
pub(crate) struct Slot(Arc<Busy>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Busy {
    pub(crate) fn new(capacity: usize) -> Arc<Busy> {
        Arc::new(Busy {
            running: AtomicUsize::new(0),
            capacity: capacity.max(1),
        })
    }

    pub(crate) fn enter(self: &Arc<Busy>) -> Slot {
        self.running.fetch_add(1, Ordering::SeqCst);
        Slot(self.clone())
    }

    /// `n of m runners busy`, when all are.
    fn full(&self) -> Option<String> {
        let running = self.running.load(Ordering::SeqCst);
        (running >= self.capacity).then(|| {
            format!(
                "{running} of {} runner{} busy",
                self.capacity,
                if self.capacity == 1 { "" } else { "s" }
            )
        })
    }
}

/// The status announcing that `job` waits for a runner (its first attempt from this job
/// message, as the launcher numbers it when it takes the job).
pub(crate) fn waiting_status(job: &ShardJob, busy: &str) -> ShardStatus {
    let job_attempt = job.attempt.max(1);
    let (exec, shard) = (&job.execution_id, job.shard_index);
    ShardStatus {
        header: Some(assay_bus::header(
            "executor-launcher",
            format!("{exec}/{shard}/{job_attempt}/waiting"),
            job.header.as_ref().map(|h| h.traceparent.as_str()),
        )),
        execution_id: exec.clone(),
        shard_index: shard,
        attempt: job_attempt,
        job_attempt,
        state: ShardState::WaitingForCapacity as i32,
        reason: busy.to_string(),
        workflow: job.workflow.clone(),
        reporter: "launcher".into(),
        ..Default::default()
    }
}

/// Every `every`, while all runners are busy, announces the jobs nobody has taken yet.
pub(crate) async fn announce_waiting(
    bus: Bus,
    consumer: &'static str,
    busy: Arc<Busy>,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut announced: HashSet<(String, u32, u32)> = HashSet::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut was_full = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(busy_text) = busy.full() else {
            was_full = false;
            continue;
        };
        let jobs = match untaken(&bus, consumer).await {
            Ok(jobs) => jobs,
            Err(e) => {
                debug!(error = %e, "cannot read the jobs waiting for a runner");
                continue;
            }
        };
        if jobs.is_empty() {
            continue;
        }
        if !was_full {
            info!(
                capacity = busy.capacity,
                waiting = jobs.len(),
                "all runners busy; shards wait for one (raise with --capacity)"
            );
            was_full = true;
        }
        if announced.len() > 100_000 {
            announced.clear(); // a long-lived launcher: forget old announcements
        }
        for job in jobs {
            let status = waiting_status(&job, &busy_text);
            if !announced.insert((job.execution_id.clone(), job.shard_index, status.attempt)) {
                continue;
            }
            let subject = subjects::shard_status(&job.execution_id, job.shard_index);
            // Taken meanwhile, or a copy of a job whose attempt already ran: its statuses
            // are ahead of this one, which must not become the shard's last word.
            if let Ok(Some(last)) = bus
                .last_message::<ShardStatus>(streams::STATUS, &subject)
                .await
                && last.job_attempt >= status.job_attempt
            {
                continue;
            }
            match bus.publish(subject, &status).await {
                Ok(_) => {
                    debug!(execution = %job.execution_id, shard = job.shard_index, busy = %busy_text, "shard waits for capacity")
                }
                Err(e) => {
                    debug!(error = %e, "cannot announce a shard waiting for capacity");
                    announced.remove(&(job.execution_id.clone(), job.shard_index, status.attempt));
                }
            }
        }
    }
}

/// The jobs of the shard stream past the consumer's delivered sequence: out, but not taken
/// by any launcher yet (oldest first, at most [`MAX_ANNOUNCED_PER_LOOK`]).
async fn untaken(bus: &Bus, consumer: &str) -> Result<Vec<ShardJob>, String> {
    let mut stream = bus
        .jetstream()
        .get_stream(streams::SHARDS)
        .await
        .map_err(|e| e.to_string())?;
    let info = stream
        .consumer_info(consumer)
        .await
        .map_err(|e| e.to_string())?
        .clone();
    if info.num_pending == 0 {
        return Ok(Vec::new());
    }
    let last = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .last_sequence;
    let mut jobs = Vec::new();
    for seq in info.delivered.stream_sequence + 1..=last {
        if jobs.len() >= MAX_ANNOUNCED_PER_LOOK || jobs.len() as u64 >= info.num_pending {
            break;
        }
        // Gone (its execution's jobs purged): skip it.
        let Ok(msg) = stream.get_raw_message(seq).await else {
            continue;
        };
        match assay_bus::decode::<ShardJob>(
            &msg.subject,
            &msg.payload,
            streams::MAX_MESSAGE_BYTES as usize,
        ) {
            Ok(job) => jobs.push(job),
            Err(e) => debug!(seq, error = %e, "unreadable shard job skipped"),
        }
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_says_so_only_when_every_runner_is() {
        let busy = Busy::new(2);
        let a = busy.enter();
        assert_eq!(busy.full(), None);
        let b = busy.enter();
        assert_eq!(busy.full().as_deref(), Some("2 of 2 runners busy"));
        drop(a);
        assert_eq!(busy.full(), None);
        drop(b);
        let one = Busy::new(1);
        let _c = one.enter();
        assert_eq!(one.full().as_deref(), Some("1 of 1 runner busy"));
    }

    #[test]
    fn a_waiting_status_is_keyed_by_the_attempt_the_job_will_run_as() {
        let job = ShardJob {
            execution_id: "E".into(),
            workflow: "w".into(),
            shard_index: 3,
            attempt: 0,
            ..Default::default()
        };
        let s = waiting_status(&job, "2 of 2 runners busy");
        assert_eq!(s.state(), ShardState::WaitingForCapacity);
        assert!(!s.state().is_terminal());
        assert_eq!((s.attempt, s.job_attempt, s.shard_index), (1, 1, 3));
        assert_eq!(s.header.unwrap().idempotency_key, "E/3/1/waiting");
        assert_eq!(s.reason, "2 of 2 runners busy");
    }
}
