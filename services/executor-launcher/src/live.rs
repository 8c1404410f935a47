//! The shard attempts this launcher is running. A second delivery of an attempt already
//! running here must not start a second runner: it waits for the running one and is then
//! acknowledged with it. That is a delivery of the same job message (the launcher stalled
//! past the ack wait, so the server handed the job out again while its runner went on), or
//! a job that came back as the same attempt (NATS restarted and lost the consumer's
//! delivery count).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::backend::AttemptId;

/// The attempts running here. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct LiveAttempts {
    running: Arc<Mutex<LiveMaps>>,
}

#[derive(Default)]
struct LiveMaps {
    by_attempt: HashMap<AttemptId, watch::Receiver<()>>,
    /// Stream sequence of the job message being handled → its attempt.
    by_message: HashMap<u64, AttemptId>,
}

/// Held while an attempt runs; dropping it ends the attempt for the waiters.
pub(crate) struct LiveAttempt {
    live: LiveAttempts,
    id: AttemptId,
    message: Option<u64>,
    _ended: watch::Sender<()>,
}

impl LiveAttempts {
    /// Takes the attempt, or returns a receiver that says when the running copy of the
    /// same attempt or of the same job message ends.
    pub(crate) fn claim(
        &self,
        id: AttemptId,
        message: Option<u64>,
    ) -> Result<LiveAttempt, watch::Receiver<()>> {
        let mut maps = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let same_message = message.and_then(|m| maps.by_message.get(&m).cloned());
        for k in same_message.iter().chain([&id]) {
            if let Some(rx) = maps.by_attempt.get(k) {
                return Err(rx.clone());
            }
        }
        let (tx, rx) = watch::channel(());
        maps.by_attempt.insert(id.clone(), rx);
        if let Some(m) = message {
            maps.by_message.insert(m, id.clone());
        }
        Ok(LiveAttempt {
            live: self.clone(),
            id,
            message,
            _ended: tx,
        })
    }
}

impl Drop for LiveAttempt {
    fn drop(&mut self) {
        let mut maps = self.live.running.lock().unwrap_or_else(|p| p.into_inner());
        maps.by_attempt.remove(&self.id);
        if let Some(m) = self.message {
            maps.by_message.remove(&m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn id(shard: u32, attempt: u32) -> AttemptId {
        AttemptId {
            execution: "01EXEC".into(),
            shard,
            attempt,
        }
    }

    #[tokio::test]
    async fn a_second_delivery_of_a_running_attempt_waits_for_it() {
        let live = LiveAttempts::default();
        let first = live.claim(id(3, 2), Some(40)).expect("first delivery runs");
        let Err(mut second) = live.claim(id(3, 2), Some(40)) else {
            panic!("the same attempt must wait");
        };
        // Another attempt of the same shard (a retry, a new message) is not held back.
        let retry = live.claim(id(3, 3), Some(41)).expect("next attempt runs");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), second.changed())
                .await
                .is_err(),
            "still running"
        );
        drop(first);
        assert!(second.changed().await.is_err(), "ended with the runner");
        drop(second);
        assert!(
            live.claim(id(3, 2), Some(40)).is_ok(),
            "a later redelivery runs again"
        );
        drop(retry);
    }

    #[tokio::test]
    async fn a_redelivery_of_a_running_job_waits_whatever_its_attempt_number() {
        // The launcher stalled past the ack wait: the server delivered the same message
        // again, which counts as attempt 2, while attempt 1's runner still works.
        let live = LiveAttempts::default();
        let first = live.claim(id(0, 1), Some(7)).expect("first delivery runs");
        let Err(mut again) = live.claim(id(0, 2), Some(7)) else {
            panic!("a redelivery of the running message must wait, not start attempt 2");
        };
        drop(first);
        assert!(
            again.changed().await.is_err(),
            "ended with the first runner"
        );
        let later = live
            .claim(id(0, 2), Some(7))
            .expect("nothing runs any more");
        // The sequence is released with the attempt.
        drop(later);
        assert!(live.running.lock().unwrap().by_message.is_empty());
    }
}
