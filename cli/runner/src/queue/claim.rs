//! Holder claims of queue batches. The work-queue consumer's ack wait is only a hint of who
//! holds a batch: after a nats-server restart it hands out batches whose holders are alive
//! and renewing. So a worker runs a batch only once it holds the batch's claim, a KV entry
//! (`<expiry unix ms> <holder>`) it creates, or takes over with compare-and-set once the
//! previous holder's expiry has passed and nobody renewed it for a further half lease (so
//! that holders cut off by an outage can renew first), and renews until its results are
//! published. `done` marks a
//! batch whose results were published: a redelivered copy of it is dropped.

use std::time::Duration;

use assay_bus::{Bus, streams};
use async_nats::jetstream::kv;

/// How long claims (and `done` marks) stay in the bucket after their last write.
const CLAIM_MAX_AGE: Duration = streams::BATCH_CLAIMS_MAX_AGE;

/// Value of a batch whose results are published.
const DONE: &str = "done";

/// Tries of [`Claims::take`] when other workers race for the same claim.
const TAKE_TRIES: usize = 4;

/// What an entry of the bucket says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum State {
    /// Held by `holder` until `expires_ms` (Unix ms).
    Held { holder: String, expires_ms: i64 },
    /// The batch ran and its results are published.
    Done,
}

impl State {
    fn parse(value: &[u8]) -> Option<State> {
        let text = std::str::from_utf8(value).ok()?;
        if text == DONE {
            return Some(State::Done);
        }
        let (expires, holder) = text.split_once(' ')?;
        Some(State::Held {
            holder: holder.to_string(),
            expires_ms: expires.parse().ok()?,
        })
    }
}

fn held(holder: &str, expires_ms: i64) -> String {
    format!("{expires_ms} {holder}")
}

/// What [`Claims::take`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Take {
    /// This worker holds the claim now (at `revision`); `from` is the holder whose claim
    /// had expired, when it was taken over.
    Run { revision: u64, from: Option<String> },
    /// Another worker holds it for `for_ms` more: leave the batch to it.
    Held { holder: String, for_ms: u64 },
    /// The batch already ran and reported.
    Done,
}

/// Why [`Claims::finish`] did not mark a batch done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotDone {
    /// Another worker holds the claim now.
    Lost,
    /// NATS could not be asked (an outage): trying again may work.
    Outage(String),
}

impl std::fmt::Display for NotDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotDone::Lost => {
                f.write_str("cannot mark the batch done: the claim is held by another worker")
            }
            NotDone::Outage(e) => f.write_str(e),
        }
    }
}

/// What [`Claims::renew`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Renewal {
    Renewed(u64),
    /// Another worker holds the claim now (its holder id, or `None` if it was removed).
    Lost(Option<String>),
}

/// The claims of one worker: `holder` is its id in every claim it writes.
#[derive(Clone)]
pub(crate) struct Claims {
    kv: kv::Store,
    holder: String,
    lease: Duration,
    /// Claims found expired once, by key: the revision seen. A claim is taken over only
    /// when it is found expired at the same revision a second time, half a lease later:
    /// after a NATS outage longer than the lease every claim has expired, though its
    /// holders are alive and renew (every third of a lease, until their results are out)
    /// as soon as they are back.
    expired: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

/// The claim key of batch `seq` of matrix group `group` of `execution`.
/// The execution is its own token (hex), so a runner's NATS user can be allowed the claims
/// of its execution alone (`$KV.assay_batch_claims.<execution hex>.>`).
pub(crate) fn key(execution: &str, group: u32, seq: u32) -> String {
    format!(
        "{}.{group}.{seq}",
        assay_bus::runner_jwt::batch_claims_prefix(execution)
    )
}

impl Claims {
    /// Opens the claims bucket (creating it) for `holder`, whose claims last `lease` past
    /// each write.
    pub(crate) async fn open(bus: &Bus, holder: String, lease: Duration) -> Result<Claims, String> {
        // An existing bucket is used as it is: a runner with minted credentials may read
        // its info but not update it (the launcher creates it).
        let kv = match bus
            .jetstream()
            .get_key_value(streams::KV_BATCH_CLAIMS)
            .await
        {
            Ok(kv) => kv,
            Err(_) => bus
                .kv_with_age(streams::KV_BATCH_CLAIMS, CLAIM_MAX_AGE)
                .await
                .map_err(|e| format!("cannot open the batch claims bucket: {e}"))?,
        };
        Ok(Claims {
            kv,
            holder,
            lease,
            expired: Default::default(),
        })
    }

    pub(crate) fn holder(&self) -> &str {
        &self.holder
    }

    fn mine(&self) -> String {
        held(
            &self.holder,
            assay_bus::now_ms() + self.lease.as_millis() as i64,
        )
    }

    /// Claims batch `key`: creates the claim, or takes it over (compare-and-set on the
    /// revision read) when its holder's expiry has passed. Of workers racing for one claim,
    /// exactly one gets [`Take::Run`].
    pub(crate) async fn take(&self, key: &str) -> Result<Take, String> {
        for _ in 0..TAKE_TRIES {
            match self.kv.create(key, self.mine().into()).await {
                Ok(revision) => {
                    return Ok(Take::Run {
                        revision,
                        from: None,
                    });
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("cannot create the batch claim: {e}")),
            }
            let entry = self
                .kv
                .entry(key)
                .await
                .map_err(|e| format!("cannot read the batch claim: {e}"))?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                continue; // released meanwhile: create it again
            };
            let from = match State::parse(&entry.value) {
                Some(State::Done) => return Ok(Take::Done),
                Some(State::Held { holder, expires_ms }) if holder != self.holder => {
                    let left = expires_ms - assay_bus::now_ms();
                    if left > 0 {
                        return Ok(Take::Held {
                            holder,
                            for_ms: left as u64,
                        });
                    }
                    // Expired: taken over only if nobody wrote it for half a lease (longer
                    // than a holder's renewal interval, a third) since this worker first
                    // saw it expired.
                    if !self.seen_expired_before(key, entry.revision) {
                        return Ok(Take::Held {
                            holder,
                            for_ms: self.lease.as_millis() as u64 / 2,
                        });
                    }
                    Some(holder)
                }
                // Ours (a write whose answer an outage swallowed): keep it.
                Some(State::Held { .. }) => None,
                None => Some(format!(
                    "an unreadable claim ({:?})",
                    String::from_utf8_lossy(&entry.value)
                )),
            };
            match self
                .kv
                .update(key, self.mine().into(), entry.revision)
                .await
            {
                Ok(revision) => return Ok(Take::Run { revision, from }),
                // Another worker took it first: look again.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
                Err(e) => return Err(format!("cannot take over the batch claim: {e}")),
            }
        }
        Err(format!(
            "the batch claim changed under {TAKE_TRIES} tries in a row; trying again later"
        ))
    }

    /// Whether `key` was found expired at `revision` before; records it when not.
    fn seen_expired_before(&self, key: &str, revision: u64) -> bool {
        let mut seen = self.expired.lock().unwrap_or_else(|p| p.into_inner());
        if seen.get(key) == Some(&revision) {
            seen.remove(key);
            return true;
        }
        seen.insert(key.to_string(), revision);
        false
    }

    /// Extends the claim held at `revision` by a lease. An error is an outage (try again at
    /// the next tick); [`Renewal::Lost`] means another worker took the claim.
    pub(crate) async fn renew(&self, key: &str, revision: u64) -> Result<Renewal, String> {
        match self.kv.update(key, self.mine().into(), revision).await {
            Ok(revision) => return Ok(Renewal::Renewed(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(e) => return Err(format!("cannot renew the batch claim: {e}")),
        }
        // The revision moved: either another worker took the claim, or an earlier renewal
        // of ours was written but its answer was lost in an outage.
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| format!("cannot read the batch claim: {e}"))?;
        let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
            return Ok(Renewal::Lost(None));
        };
        match State::parse(&entry.value) {
            Some(State::Held { holder, .. }) if holder == self.holder => {
                match self
                    .kv
                    .update(key, self.mine().into(), entry.revision)
                    .await
                {
                    Ok(revision) => Ok(Renewal::Renewed(revision)),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        Ok(Renewal::Lost(None))
                    }
                    Err(e) => Err(format!("cannot renew the batch claim: {e}")),
                }
            }
            Some(State::Held { holder, .. }) => Ok(Renewal::Lost(Some(holder))),
            Some(State::Done) => Ok(Renewal::Lost(Some("a worker that finished it".into()))),
            None => Ok(Renewal::Lost(None)),
        }
    }

    /// Marks the batch held at `revision` done (its results are published), so that a
    /// redelivered copy is dropped. [`NotDone::Lost`] when the claim is no longer ours.
    pub(crate) async fn finish(&self, key: &str, revision: u64) -> Result<(), NotDone> {
        let outage = |e: String| NotDone::Outage(format!("cannot mark the batch done: {e}"));
        match self.kv.update(key, DONE.into(), revision).await {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {}
            Err(e) => return Err(outage(e.to_string())),
        }
        // A renewal cut short when the batch ended may have been written: still ours?
        let entry = self
            .kv
            .entry(key)
            .await
            .map_err(|e| outage(e.to_string()))?;
        let ours = entry.filter(|e| {
            e.operation == kv::Operation::Put
                && matches!(State::parse(&e.value), Some(State::Held { holder, .. }) if holder == self.holder)
        });
        match ours {
            Some(e) => self
                .kv
                .update(key, DONE.into(), e.revision)
                .await
                .map(|_| ())
                .map_err(|e| outage(e.to_string())),
            None => Err(NotDone::Lost),
        }
    }

    /// [`Claims::finish`], tried again while NATS cannot be reached (a restart, a lost
    /// connection) for up to `within`: a batch whose results are out but whose `done` mark
    /// was not written would run again on the worker that takes the expired claim over.
    /// Gives up at once when another worker holds the claim.
    pub(crate) async fn finish_patiently(
        &self,
        key: &str,
        revision: u64,
        within: Duration,
    ) -> Result<(), NotDone> {
        let until = tokio::time::Instant::now() + within;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.finish(key, revision).await {
                Err(NotDone::Outage(_)) if tokio::time::Instant::now() + pause < until => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                done => return done,
            }
        }
    }

    /// Gives the claim held at `revision` up (the batch goes back to the queue), unless
    /// another worker holds it by now.
    pub(crate) async fn release(&self, key: &str, revision: u64) -> Result<(), String> {
        self.kv
            .delete_expect_revision(key, Some(revision))
            .await
            .map_err(|e| format!("cannot release the batch claim: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use assay_bus::NatsOptions;
    use assay_testkit::NatsServer;
    use tokio_util::sync::CancellationToken;

    #[test]
    fn claim_values_parse_back() {
        assert_eq!(
            State::parse(held("exec/0/1/pid7 x", 1234).as_bytes()),
            Some(State::Held {
                holder: "exec/0/1/pid7 x".into(),
                expires_ms: 1234
            })
        );
        assert_eq!(State::parse(b"done"), Some(State::Done));
        assert_eq!(State::parse(b"garbage"), None);
        assert_eq!(State::parse(b"soon someone"), None);
    }

    async fn bus(server: &NatsServer) -> Bus {
        let opts = NatsOptions {
            url: server.url(),
            ..NatsOptions::default()
        };
        Bus::connect(&opts, &CancellationToken::new())
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"))
    }

    async fn claims(bus: &Bus, holder: &str, lease: Duration) -> Claims {
        Claims::open(bus, holder.to_string(), lease)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A batch held by a live holder is left to it; once the holder stops renewing and its
    /// expiry passes, the second worker takes it over; the first one's renewal then finds
    /// it lost, and cannot mark it done or release it.
    #[tokio::test]
    async fn a_live_holder_keeps_its_batch_and_an_expired_one_loses_it() {
        let server = NatsServer::start();
        let bus = bus(&server).await;
        let lease = Duration::from_millis(1500);
        let a = claims(&bus, "a", lease).await;
        let b = claims(&bus, "b", lease).await;
        let key = key("exec", 0, 3);

        let Ok(Take::Run {
            revision: ra,
            from: None,
        }) = a.take(&key).await
        else {
            panic!("the first worker creates the claim");
        };
        let Ok(Take::Held { holder, for_ms }) = b.take(&key).await else {
            panic!("a live claim is left to its holder");
        };
        assert_eq!(holder, "a");
        assert!(for_ms > 0 && for_ms <= 1500, "{for_ms}");

        // Renewed, it stays a's.
        let Ok(Renewal::Renewed(ra)) = a.renew(&key, ra).await else {
            panic!("the holder renews its claim");
        };
        assert!(matches!(b.take(&key).await, Ok(Take::Held { .. })));

        // a stops renewing: b waits for the expiry it was told, then takes over.
        let taken = loop {
            match b.take(&key).await {
                Ok(Take::Held { for_ms, .. }) => {
                    tokio::time::sleep(Duration::from_millis(for_ms + 10)).await
                }
                other => break other,
            }
        };
        let Ok(Take::Run { revision: rb, from }) = taken else {
            panic!("an expired claim is taken over: {taken:?}");
        };
        assert_eq!(from.as_deref(), Some("a"));
        assert_eq!(a.renew(&key, ra).await, Ok(Renewal::Lost(Some("b".into()))));
        assert!(a.finish(&key, ra).await.is_err(), "a cannot mark b's batch");
        assert!(
            a.release(&key, ra).await.is_err(),
            "a cannot release b's claim"
        );

        // b finishes: a later copy of the batch is dropped by anyone.
        b.finish(&key, rb).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.take(&key).await, Ok(Take::Done));
        assert_eq!(b.take(&key).await, Ok(Take::Done));
    }

    /// A holder cut off longer than its lease (a NATS outage) renews when it is back: a
    /// worker that found the claim expired does not take it over, one that finds it
    /// expired at the same revision a lease later does.
    #[tokio::test]
    async fn an_expired_claim_renewed_within_a_lease_stays_with_its_holder() {
        let server = NatsServer::start();
        let bus = bus(&server).await;
        let lease = Duration::from_millis(300);
        let a = claims(&bus, "a", lease).await;
        let b = claims(&bus, "b", lease).await;
        let key = key("exec", 0, 5);
        let Ok(Take::Run { revision, .. }) = a.take(&key).await else {
            panic!("a creates the claim");
        };
        tokio::time::sleep(lease + Duration::from_millis(50)).await;
        // Expired, seen by b for the first time: left to a for a lease.
        assert!(matches!(b.take(&key).await, Ok(Take::Held { holder, .. }) if holder == "a"));
        // a is back and renews.
        let Ok(Renewal::Renewed(revision)) = a.renew(&key, revision).await else {
            panic!("the holder renews after the outage");
        };
        tokio::time::sleep(lease + Duration::from_millis(50)).await;
        // Expired again, but at a revision b has not seen expired: still a's.
        assert!(matches!(b.take(&key).await, Ok(Take::Held { holder, .. }) if holder == "a"));
        tokio::time::sleep(lease).await;
        // Nobody wrote it for a lease since: b takes it over.
        assert!(matches!(b.take(&key).await, Ok(Take::Run { from: Some(h), .. }) if h == "a"));
        assert_eq!(
            a.renew(&key, revision).await,
            Ok(Renewal::Lost(Some("b".into())))
        );
    }

    /// Workers racing for one expired claim: exactly one takes it over.
    #[tokio::test]
    async fn of_workers_racing_for_an_expired_claim_exactly_one_wins() {
        let server = NatsServer::start();
        let bus = bus(&server).await;
        let lease = Duration::from_secs(30);
        let key = key("exec", 1, 9);
        let kv = bus
            .kv_with_age(streams::KV_BATCH_CLAIMS, CLAIM_MAX_AGE)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for round in 0..5 {
            // A claim of a dead worker, expired.
            kv.put(
                &key,
                held(&format!("dead-{round}"), assay_bus::now_ms() - 1).into(),
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
            // Each first sees it expired (and leaves it a lease to its holder), then they
            // race.
            let mut workers = Vec::new();
            for w in 0..6 {
                let c = claims(&bus, &format!("w{w}"), lease).await;
                let first = c.take(&key).await;
                assert!(
                    matches!(&first, Ok(Take::Held { holder, .. }) if *holder == format!("dead-{round}")),
                    "{first:?}"
                );
                workers.push(c);
            }
            let mut racers = Vec::new();
            for c in workers {
                let key = key.clone();
                racers.push(tokio::spawn(async move { c.take(&key).await }));
            }
            let mut won = Vec::new();
            for (w, r) in racers.into_iter().enumerate() {
                match r.await.unwrap_or_else(|e| panic!("{e}")) {
                    Ok(Take::Run { from, .. }) => {
                        assert_eq!(from, Some(format!("dead-{round}")));
                        won.push(w);
                    }
                    Ok(Take::Held { holder, .. }) => {
                        assert!(holder.starts_with('w'), "{holder}")
                    }
                    Ok(Take::Done) => panic!("nobody finished it"),
                    Err(e) => panic!("round {round}: {e}"),
                }
            }
            assert_eq!(won.len(), 1, "round {round}: winners {won:?}");
        }
    }

    /// A renewal whose answer was lost (the revision we hold is stale but the claim is
    /// still ours) renews again and marks the batch done instead of giving it up; a released claim is created
    /// again by the next taker.
    #[tokio::test]
    async fn a_stale_revision_of_our_own_claim_still_renews_and_finishes_and_release_frees_it() {
        let server = NatsServer::start();
        let bus = bus(&server).await;
        let a = claims(&bus, "a", Duration::from_secs(30)).await;
        let b = claims(&bus, "b", Duration::from_secs(30)).await;
        let key = key("exec", 0, 1);
        let Ok(Take::Run {
            revision: stale, ..
        }) = a.take(&key).await
        else {
            panic!("created");
        };
        let Ok(Renewal::Renewed(current)) = a.renew(&key, stale).await else {
            panic!("renewed");
        };
        let Ok(Renewal::Renewed(current)) = a.renew(&key, stale).await.map(|r| match r {
            Renewal::Renewed(n) => {
                assert!(n > current);
                Renewal::Renewed(n)
            }
            lost => lost,
        }) else {
            panic!("a stale revision of our own claim renews");
        };
        a.release(&key, current)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let Ok(Take::Run {
            revision: stale, ..
        }) = a.take(&key).await
        else {
            panic!("created again");
        };
        let Ok(Renewal::Renewed(_)) = a.renew(&key, stale).await else {
            panic!("renewed");
        };
        a.finish(&key, stale)
            .await
            .unwrap_or_else(|e| panic!("a stale revision of our own claim finishes: {e}"));
        assert_eq!(b.take(&key).await, Ok(Take::Done));
        let key = super::key("exec", 0, 2);
        assert!(matches!(
            b.take(&key).await,
            Ok(Take::Run { from: None, .. })
        ));
    }
}
