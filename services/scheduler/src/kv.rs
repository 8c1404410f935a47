//! The few key-value operations dedup and concurrency slots are built on, behind a trait so
//! that their races can be driven step by step in unit tests: the JetStream bucket in
//! production ([`Bucket`]), a map with the same compare-and-set semantics in tests
//! (`Memory`).
//!
//! The plan records that say a cause is done are read through [`Plans`] for the same reason.

use assay_bus::{Bus, streams, subjects};
use assay_proto::Execution;
use async_nats::jetstream::kv;
use bytes::Bytes;
use futures::future::BoxFuture;

use crate::{Error, Result};

/// A key-value bucket. Revisions grow with every write to the bucket; a deleted or purged
/// key reads as absent and can be created again.
pub(crate) trait Kv: Send + Sync {
    /// The live value of `key` and its revision.
    fn entry<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<(Bytes, u64)>>>;

    /// Writes `key` only if it is absent: the revision written, none when the key exists.
    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<Option<u64>>>;

    /// Writes `key` only if its revision is still `revision`: `false` when it moved on.
    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        revision: u64,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Writes `key` whatever it holds.
    fn put<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<()>>;

    /// Deletes `key`; with a revision, only if it is still that one (`false` when it moved
    /// on).
    fn delete<'a>(&'a self, key: &'a str, revision: Option<u64>) -> BoxFuture<'a, Result<bool>>;

    /// Live keys that start with `prefix`, sorted.
    fn keys<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>>;
}

/// Whether a publish was refused because the subject's last sequence was not the expected
/// one (JetStream error 10071), which is how a stale compare-and-set shows.
fn wrong_revision(e: &impl std::fmt::Display) -> bool {
    let s = e.to_string();
    s.contains("10071") || s.contains("wrong last sequence")
}

/// A JetStream key-value bucket.
pub(crate) struct Bucket(pub(crate) kv::Store);

impl Kv for Bucket {
    fn entry<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<(Bytes, u64)>>> {
        Box::pin(async move {
            let entry = self.0.entry(key).await.map_err(|e| Error::kv("get", e))?;
            Ok(entry
                .filter(|e| e.operation == kv::Operation::Put)
                .map(|e| (e.value, e.revision)))
        })
    }

    fn create<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            match self.0.create(key, value).await {
                Ok(revision) => Ok(Some(revision)),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
                Err(e) => Err(Error::kv("create", e)),
            }
        })
    }

    fn update<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        revision: u64,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            match self.0.update(key, value, revision).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) if wrong_revision(&e) => Ok(false),
                Err(e) => Err(Error::kv("update", e)),
            }
        })
    }

    fn put<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.0
                .put(key, value)
                .await
                .map_err(|e| Error::kv("put", e))?;
            Ok(())
        })
    }

    fn delete<'a>(&'a self, key: &'a str, revision: Option<u64>) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            match self.0.delete_expect_revision(key, revision).await {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
                Err(e) if wrong_revision(&e) => Ok(false),
                Err(e) => Err(Error::kv("delete", e)),
            }
        })
    }

    fn keys<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(async move {
            use futures::TryStreamExt;
            let mut keys: Vec<String> = self
                .0
                .keys()
                .await
                .map_err(|e| Error::kv("keys", e))?
                .try_collect()
                .await
                .map_err(|e| Error::kv("keys", e))?;
            keys.retain(|k| k.starts_with(prefix));
            keys.sort();
            Ok(keys)
        })
    }
}

/// Where the execution plan records are: the last one published for an execution, if any.
pub(crate) trait Plans: Send + Sync {
    fn plan<'a>(&'a self, execution: &'a str) -> BoxFuture<'a, Result<Option<Execution>>>;
}

impl Plans for Bus {
    fn plan<'a>(&'a self, execution: &'a str) -> BoxFuture<'a, Result<Option<Execution>>> {
        Box::pin(async move {
            Ok(self
                .last_message(streams::STATUS, &subjects::execution_plan(execution))
                .await?)
        })
    }
}

#[cfg(test)]
pub(crate) use memory::{Memory, Op, PlanBook, now};

#[cfg(test)]
mod memory {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Mutex;

    use assay_proto::Execution;
    use bytes::Bytes;
    use futures::future::BoxFuture;

    use super::{Kv, Plans};
    use crate::Result;

    /// An operation of [`Memory`], to run a step of another actor just before it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) enum Op {
        Entry,
        Create,
        Update,
        Put,
        Delete,
        Keys,
    }

    type Step = Box<dyn FnOnce(&Memory) + Send>;

    #[derive(Default)]
    struct State {
        /// Key → value and revision; `None` for a deleted key (its tombstone).
        entries: BTreeMap<String, (Option<Bytes>, u64)>,
        revision: u64,
    }

    impl State {
        fn write(&mut self, key: &str, value: Option<Bytes>) -> u64 {
            self.revision += 1;
            self.entries.insert(key.to_string(), (value, self.revision));
            self.revision
        }

        fn live(&self, key: &str) -> Option<(Bytes, u64)> {
            match self.entries.get(key) {
                Some((Some(v), r)) => Some((v.clone(), *r)),
                _ => None,
            }
        }
    }

    /// An in-memory bucket with the compare-and-set semantics of a JetStream one: `create`
    /// fails when the key exists and is not deleted, `update` and a `delete` with a
    /// revision fail when the key's revision is another one. Every operation is atomic;
    /// a test interleaves two actors by running a step of the other just before a given
    /// operation on a given key ([`Memory::before`]).
    #[derive(Default)]
    pub(crate) struct Memory {
        state: Mutex<State>,
        steps: Mutex<Vec<(Op, String, Step)>>,
        /// Operations so far, and a step to run before the one with this number.
        ops: Mutex<(usize, Option<(usize, Step)>)>,
    }

    /// The output of a future that is ready at once, as every future of [`Memory`] is:
    /// lets a test step run another actor's whole operation in the middle of one.
    pub(crate) fn now<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => panic!("an in-memory operation waited"),
        }
    }

    impl Memory {
        /// Runs `step` once, just before the next `op` on `key` (for `Keys`, the prefix).
        pub(crate) fn before(
            &self,
            op: Op,
            key: impl Into<String>,
            step: impl FnOnce(&Memory) + Send + 'static,
        ) {
            self.steps
                .lock()
                .unwrap()
                .push((op, key.into(), Box::new(step)));
        }

        /// Runs `step` once, just before the operation numbered `n` from now (0: the next).
        pub(crate) fn before_op(&self, n: usize, step: impl FnOnce(&Memory) + Send + 'static) {
            let mut ops = self.ops.lock().unwrap();
            let at = ops.0 + n;
            ops.1 = Some((at, Box::new(step)));
        }

        /// Whether every step set with [`Memory::before`] or [`Memory::before_op`] ran.
        pub(crate) fn all_steps_ran(&self) -> bool {
            self.steps.lock().unwrap().is_empty() && self.ops.lock().unwrap().1.is_none()
        }

        fn hook(&self, op: Op, key: &str) {
            let numbered = {
                let mut ops = self.ops.lock().unwrap();
                let n = ops.0;
                ops.0 += 1;
                match ops.1.take() {
                    Some((at, step)) if at == n => Some(step),
                    other => {
                        ops.1 = other;
                        None
                    }
                }
            };
            if let Some(step) = numbered {
                step(self);
            }
            let step = {
                let mut steps = self.steps.lock().unwrap();
                steps
                    .iter()
                    .position(|(o, k, _)| *o == op && k == key)
                    .map(|i| steps.remove(i).2)
            };
            if let Some(step) = step {
                step(self);
            }
        }

        /// The live value of `key`, as text (for assertions and test steps).
        pub(crate) fn value(&self, key: &str) -> Option<String> {
            self.state
                .lock()
                .unwrap()
                .live(key)
                .map(|(v, _)| String::from_utf8_lossy(&v).to_string())
        }

        /// Live keys that start with `prefix`, sorted (for assertions and test steps).
        pub(crate) fn live_keys(&self, prefix: &str) -> Vec<String> {
            let state = self.state.lock().unwrap();
            state
                .entries
                .iter()
                .filter(|(k, (v, _))| k.starts_with(prefix) && v.is_some())
                .map(|(k, _)| k.clone())
                .collect()
        }

        /// Writes `key` at once (a test step: another actor's write).
        pub(crate) fn set(&self, key: &str, value: &str) {
            self.state
                .lock()
                .unwrap()
                .write(key, Some(Bytes::from(value.to_string())));
        }

        /// Deletes `key` at once (a test step: another actor's delete, or an expiry).
        pub(crate) fn remove(&self, key: &str) {
            self.state.lock().unwrap().write(key, None);
        }
    }

    impl Kv for Memory {
        fn entry<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<(Bytes, u64)>>> {
            self.hook(Op::Entry, key);
            let live = self.state.lock().unwrap().live(key);
            Box::pin(async move { Ok(live) })
        }

        fn create<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<Option<u64>>> {
            self.hook(Op::Create, key);
            let mut state = self.state.lock().unwrap();
            let created = state
                .live(key)
                .is_none()
                .then(|| state.write(key, Some(value)));
            Box::pin(async move { Ok(created) })
        }

        fn update<'a>(
            &'a self,
            key: &'a str,
            value: Bytes,
            revision: u64,
        ) -> BoxFuture<'a, Result<bool>> {
            self.hook(Op::Update, key);
            let mut state = self.state.lock().unwrap();
            // Like JetStream's expected last subject sequence: the key's last write, a
            // delete included.
            let current = state.entries.get(key).map(|(_, r)| *r).unwrap_or(0);
            let updated = current == revision;
            if updated {
                state.write(key, Some(value));
            }
            Box::pin(async move { Ok(updated) })
        }

        fn put<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<()>> {
            self.hook(Op::Put, key);
            self.state.lock().unwrap().write(key, Some(value));
            Box::pin(async move { Ok(()) })
        }

        fn delete<'a>(
            &'a self,
            key: &'a str,
            revision: Option<u64>,
        ) -> BoxFuture<'a, Result<bool>> {
            self.hook(Op::Delete, key);
            let mut state = self.state.lock().unwrap();
            let current = state.entries.get(key).map(|(_, r)| *r).unwrap_or(0);
            let deleted = revision.is_none_or(|r| r == current);
            if deleted {
                state.write(key, None);
            }
            Box::pin(async move { Ok(deleted) })
        }

        fn keys<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
            self.hook(Op::Keys, prefix);
            let keys = self.live_keys(prefix);
            Box::pin(async move { Ok(keys) })
        }
    }

    /// Plan records in memory: the execution ids whose plan record is out.
    #[derive(Default)]
    pub(crate) struct PlanBook(pub(crate) Mutex<HashMap<String, Execution>>);

    impl PlanBook {
        pub(crate) fn publish(&self, execution: Execution) {
            self.0
                .lock()
                .unwrap()
                .insert(execution.id.clone(), execution);
        }
    }

    impl Plans for PlanBook {
        fn plan<'a>(&'a self, execution: &'a str) -> BoxFuture<'a, Result<Option<Execution>>> {
            let plan = self.0.lock().unwrap().get(execution).cloned();
            Box::pin(async move { Ok(plan) })
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[tokio::test]
        async fn create_update_and_delete_compare_and_set_like_jetstream() {
            let kv = Memory::default();
            assert!(kv.create("a", "1".into()).await.unwrap().is_some());
            assert_eq!(kv.create("a", "2".into()).await.unwrap(), None, "exists");
            let (_, r1) = kv.entry("a").await.unwrap().unwrap();
            assert!(!kv.update("a", "3".into(), r1 + 7).await.unwrap());
            assert!(kv.update("a", "3".into(), r1).await.unwrap());
            assert!(!kv.update("a", "4".into(), r1).await.unwrap(), "stale");
            assert!(!kv.delete("a", Some(r1)).await.unwrap(), "stale");
            let (v, r2) = kv.entry("a").await.unwrap().unwrap();
            assert_eq!(v, Bytes::from("3"));
            assert!(kv.delete("a", Some(r2)).await.unwrap());
            assert_eq!(kv.entry("a").await.unwrap(), None);
            assert!(kv.keys("").await.unwrap().is_empty());
            assert!(
                kv.create("a", "5".into()).await.unwrap().is_some(),
                "deleted keys come back"
            );
            assert!(!kv.update("b", "1".into(), 1).await.unwrap());
            assert!(kv.update("b", "1".into(), 0).await.unwrap(), "0: absent");
        }
    }
}

/// The in-memory bucket is only worth its tests if it answers as JetStream does: the same
/// script of operations against both, compared step by step (a real nats-server, as the
/// one place in this crate's unit tests that does I/O).
#[cfg(test)]
mod agrees_with_jetstream {
    use std::sync::Arc;

    use assay_bus::{Bus, NatsOptions};
    use bytes::Bytes;
    use tokio_util::sync::CancellationToken;

    use super::{Bucket, Kv, Memory};

    /// What each step answered, revisions aside (they count differently).
    async fn script(kv: &dyn Kv) -> Vec<String> {
        let mut said = Vec::new();
        let mut note = |s: String| said.push(s);
        note(format!(
            "create a: {}",
            kv.create("a", Bytes::from("1")).await.unwrap().is_some()
        ));
        note(format!(
            "create a again: {}",
            kv.create("a", Bytes::from("2")).await.unwrap().is_some()
        ));
        let (v, r) = kv.entry("a").await.unwrap().unwrap();
        note(format!("entry a: {v:?}"));
        note(format!(
            "update a stale: {}",
            kv.update("a", Bytes::from("3"), r + 100).await.unwrap()
        ));
        note(format!(
            "update a: {}",
            kv.update("a", Bytes::from("3"), r).await.unwrap()
        ));
        note(format!(
            "update a again: {}",
            kv.update("a", Bytes::from("4"), r).await.unwrap()
        ));
        note(format!(
            "delete a stale: {}",
            kv.delete("a", Some(r)).await.unwrap()
        ));
        let (_, r) = kv.entry("a").await.unwrap().unwrap();
        kv.put("b.1", Bytes::from("x")).await.unwrap();
        kv.put("b.0", Bytes::from("y")).await.unwrap();
        note(format!("keys: {:?}", kv.keys("").await.unwrap()));
        note(format!("keys b.: {:?}", kv.keys("b.").await.unwrap()));
        note(format!(
            "delete a: {}",
            kv.delete("a", Some(r)).await.unwrap()
        ));
        note(format!(
            "entry a deleted: {:?}",
            kv.entry("a").await.unwrap()
        ));
        note(format!("keys after: {:?}", kv.keys("").await.unwrap()));
        note(format!(
            "create a after delete: {}",
            kv.create("a", Bytes::from("5")).await.unwrap().is_some()
        ));
        note(format!(
            "delete b.0 any: {}",
            kv.delete("b.0", None).await.unwrap()
        ));
        note(format!(
            "create b.0 after delete: {}",
            kv.create("b.0", Bytes::from("6")).await.unwrap().is_some()
        ));
        note(format!("entry none: {:?}", kv.entry("none").await.unwrap()));
        said
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_in_memory_bucket_answers_as_jetstream_does() {
        let server = assay_testkit::NatsServer::start();
        let nats = NatsOptions {
            url: server.url(),
            ..NatsOptions::default()
        };
        let bus = Bus::connect(&nats, &CancellationToken::new())
            .await
            .unwrap();
        let bucket = Bucket(bus.kv("assay_kv_contract").await.unwrap());
        let real = script(&bucket).await;
        let memory = script(Arc::new(Memory::default()).as_ref()).await;
        assert_eq!(memory, real);
    }
}
