//! The duration history planners read, kept per workflow in the `assay_history` bucket in
//! bounded pieces.
//!
//! One value per workflow does not scale: at about 111 bytes per test, a suite of ~9,400
//! tests passes the server's 1 MiB payload limit, the write fails and the history freezes.
//! So a snapshot is written as
//!
//! - pieces `<kv_key(workflow)>.<generation>.<n>`: `HistorySnapshot`s of at most
//!   [`PIECE_TESTS`] tests and [`PIECE_BYTES`] bytes each, under a fresh generation (a
//!   ULID), then
//! - the manifest at `<kv_key(workflow)>` ([`HistoryManifest`]: generation, piece count,
//!   test count, shard start cost), written last with compare-and-set, then
//! - every older piece of the workflow is purged from the bucket's stream (no delete
//!   markers left behind): older generations and pieces of writes that never committed.
//!
//! A reader takes the manifest, then the pieces of its generation only, so it never mixes
//! two snapshots; a piece gone meanwhile means a newer snapshot replaced it, and the reader
//! starts again from the new manifest. A manifest or piece that does not decode is reported
//! as a [`Error::Decode`]; [`Bus::planning_history`] then plans without history, with a
//! warning, rather than failing the event.
//!
//! The manifest keeps the field numbers of `HistorySnapshot` (1 to 4), so a value written
//! by an older aggregator (the whole snapshot in one value) still reads, and an older
//! scheduler reading a manifest sees a snapshot without tests (plans without history)
//! instead of failing.

use std::time::Duration;

use assay_proto::{HistorySnapshot, TestEstimate};
use async_nats::jetstream::kv;
use prost::Message;
use tracing::{debug, warn};

use crate::{Bus, Error, Result, kv_key, streams};

/// At most this many tests per piece.
pub const PIECE_TESTS: usize = 2_000;
/// At most this many encoded bytes per piece: well under the 1 MiB payload limit whatever
/// the test ids' length.
pub const PIECE_BYTES: usize = 256 * 1024;
/// Tests not seen for this long are left out of the snapshot.
pub const HISTORY_KEPT: Duration = Duration::from_secs(30 * 24 * 3600);
/// Pieces written or read at once.
const CONCURRENCY: usize = 8;
/// Tries of a write that lost a race with another writer, and of a read whose snapshot was
/// replaced while reading.
const ATTEMPTS: usize = 4;

/// The value at `<kv_key(workflow)>`: which generation of pieces holds the workflow's
/// snapshot. Fields 1 to 4 are those of `HistorySnapshot` (`tests` is filled only in values
/// written whole by older aggregators).
#[derive(Clone, PartialEq, Message)]
pub struct HistoryManifest {
    #[prost(string, tag = "1")]
    pub workflow: String,
    /// Only in a whole snapshot written by an older aggregator (then `pieces` is 0).
    #[prost(message, repeated, tag = "2")]
    pub tests: Vec<TestEstimate>,
    #[prost(int64, tag = "3")]
    pub updated_at_ms: i64,
    #[prost(double, tag = "4")]
    pub shard_start_ms: f64,
    /// The pieces' generation: a ULID, unique per write.
    #[prost(string, tag = "5")]
    pub generation: String,
    #[prost(uint32, tag = "6")]
    pub pieces: u32,
    /// Tests in all pieces together.
    #[prost(uint64, tag = "7")]
    pub test_count: u64,
}

/// What a write stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub generation: String,
    pub pieces: usize,
    pub tests: usize,
    /// Encoded bytes of the pieces and the manifest.
    pub bytes: usize,
    /// Tests left out because one alone would not fit in a piece.
    pub too_large: usize,
}

/// Key of the workflow's manifest.
pub fn manifest_key(workflow: &str) -> String {
    kv_key(workflow)
}

/// Key of piece `index` of `generation`.
pub fn piece_key(workflow: &str, generation: &str, index: usize) -> String {
    format!("{}.{generation}.{index}", kv_key(workflow))
}

/// Encoded size of a test inside a piece: tag, length prefix, body.
fn element_len(t: &TestEstimate) -> usize {
    t.encoded_len() + prost::length_delimiter_len(t.encoded_len()) + 1
}

/// Builds a snapshot's encoded pieces from its tests one at a time, so that a writer holds
/// the tests of one piece and the encoded bytes, never the whole suite as messages (at
/// 100,000 tests, building the snapshot as one `HistorySnapshot` and splitting it took the
/// aggregator from 27 to 290 MiB). Pieces hold at most [`PIECE_TESTS`] tests and
/// [`PIECE_BYTES`] encoded bytes, in order.
#[derive(Debug)]
pub struct PieceEncoder {
    workflow: String,
    updated_at_ms: i64,
    shard_start_ms: f64,
    piece: Vec<TestEstimate>,
    bytes: usize,
    encoded: Vec<Vec<u8>>,
    tests: usize,
    too_large: usize,
}

impl PieceEncoder {
    pub fn new(workflow: &str, updated_at_ms: i64, shard_start_ms: f64) -> PieceEncoder {
        PieceEncoder {
            workflow: workflow.to_string(),
            updated_at_ms,
            shard_start_ms,
            piece: Vec::new(),
            bytes: 0,
            encoded: Vec::new(),
            tests: 0,
            too_large: 0,
        }
    }

    /// Adds one test; a test that alone would pass [`PIECE_BYTES`] is left out and counted.
    pub fn push(&mut self, t: TestEstimate) {
        let size = element_len(&t);
        if size > PIECE_BYTES {
            self.too_large += 1;
            return;
        }
        if !self.piece.is_empty()
            && (self.piece.len() == PIECE_TESTS || self.bytes + size > PIECE_BYTES)
        {
            self.cut();
        }
        self.bytes += size;
        self.tests += 1;
        self.piece.push(t);
    }

    fn cut(&mut self) {
        let snapshot = HistorySnapshot {
            workflow: self.workflow.clone(),
            tests: std::mem::take(&mut self.piece),
            updated_at_ms: self.updated_at_ms,
            shard_start_ms: self.shard_start_ms,
        };
        self.encoded.push(snapshot.encode_to_vec());
        self.bytes = 0;
    }

    /// The snapshot's pieces, ready for [`write_pieces`].
    pub fn finish(mut self) -> Pieces {
        if !self.piece.is_empty() {
            self.cut();
        }
        Pieces {
            workflow: self.workflow,
            updated_at_ms: self.updated_at_ms,
            shard_start_ms: self.shard_start_ms,
            encoded: self.encoded,
            tests: self.tests,
            too_large: self.too_large,
        }
    }
}

/// A snapshot as encoded pieces (see [`PieceEncoder`]).
#[derive(Debug, Clone)]
pub struct Pieces {
    pub workflow: String,
    pub updated_at_ms: i64,
    pub shard_start_ms: f64,
    pub encoded: Vec<Vec<u8>>,
    /// Tests in all pieces together.
    pub tests: usize,
    /// Tests left out because one alone would not fit in a piece.
    pub too_large: usize,
}

fn js(what: impl Into<String>, e: impl std::fmt::Display) -> Error {
    Error::js(what, e)
}

/// Writes `snapshot` as the workflow's history (see the module docs). Idempotent; two
/// writers racing each commit whole snapshots, the last one wins.
pub async fn write(kv: &kv::Store, snapshot: &HistorySnapshot) -> Result<Written> {
    let mut pieces = PieceEncoder::new(
        &snapshot.workflow,
        snapshot.updated_at_ms,
        snapshot.shard_start_ms,
    );
    for t in &snapshot.tests {
        pieces.push(t.clone());
    }
    write_pieces(kv, &pieces.finish()).await
}

/// Writes a snapshot given as encoded pieces (see [`write`] and [`PieceEncoder`]).
pub async fn write_pieces(kv: &kv::Store, pieces: &Pieces) -> Result<Written> {
    let workflow = pieces.workflow.as_str();
    let (too_large, tests, encoded) = (pieces.too_large, pieces.tests, &pieces.encoded);
    if too_large > 0 {
        warn!(
            workflow,
            tests = too_large,
            limit = PIECE_BYTES,
            "tests with ids too long for the duration history left out of it"
        );
    }
    let manifest_key = manifest_key(workflow);
    for _ in 0..ATTEMPTS {
        let current = kv
            .entry(manifest_key.clone())
            .await
            .map_err(|e| js(format!("read the history manifest of {workflow}"), e))?;
        let generation = ulid::Ulid::new().to_string();
        // Pieces first, under the new generation; the lowest sequence bounds the purge.
        let mut first_seq = u64::MAX;
        for (n, chunk) in encoded.chunks(CONCURRENCY).enumerate() {
            let mut puts = Vec::with_capacity(chunk.len());
            for (i, bytes) in chunk.iter().enumerate() {
                let key = piece_key(workflow, &generation, n * CONCURRENCY + i);
                puts.push(kv.put(key, bytes.clone().into()));
            }
            for put in futures::future::join_all(puts).await {
                let seq = put.map_err(|e| js(format!("write the history of {workflow}"), e))?;
                first_seq = first_seq.min(seq);
            }
        }
        let manifest = HistoryManifest {
            workflow: workflow.to_string(),
            tests: Vec::new(),
            updated_at_ms: pieces.updated_at_ms,
            shard_start_ms: pieces.shard_start_ms,
            generation: generation.clone(),
            pieces: encoded.len() as u32,
            test_count: tests as u64,
        }
        .encode_to_vec();
        let manifest_len = manifest.len();
        let committed = match current {
            Some(entry) if entry.operation == kv::Operation::Put => kv
                .update(&manifest_key, manifest.into(), entry.revision)
                .await
                .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
            _ => kv
                .create(&manifest_key, manifest.into())
                .await
                .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
        };
        match committed {
            Ok(revision) => {
                // Everything of this workflow older than this generation's first piece:
                // earlier generations and writes that never committed.
                let below = first_seq.min(revision);
                purge(kv, &format!("{}.>", kv_key(workflow)), Some(below)).await?;
                let bytes = encoded.iter().map(Vec::len).sum::<usize>() + manifest_len;
                debug!(workflow, %generation, pieces = encoded.len(), tests, bytes, "duration history written");
                return Ok(Written {
                    generation,
                    pieces: encoded.len(),
                    tests,
                    bytes,
                    too_large,
                });
            }
            Err(true) => {
                // Another writer committed first: drop this generation and write again on
                // top of its manifest.
                debug!(
                    workflow,
                    "duration history written by another writer meanwhile; writing again"
                );
                purge(kv, &format!("{}.{generation}.>", kv_key(workflow)), None).await?;
            }
            Err(false) => {
                return Err(Error::JetStream {
                    what: format!("write the history manifest of {workflow}"),
                    reason: "the bucket refused the write".into(),
                });
            }
        }
    }
    Err(Error::JetStream {
        what: format!("write the history of {workflow}"),
        reason: format!("other writers replaced it {ATTEMPTS} times meanwhile; will retry"),
    })
}

/// Removes the bucket's messages under `filter` (below sequence `below` when given) from
/// its stream: no delete markers are left behind.
async fn purge(kv: &kv::Store, filter: &str, below: Option<u64>) -> Result<()> {
    let subject = format!("{}{filter}", kv.prefix);
    let request = kv.stream.purge().filter(subject.clone());
    let done = match below {
        Some(seq) => request.sequence(seq).await,
        None => request.await,
    };
    done.map_err(|e| js(format!("purge {subject}"), e))?;
    Ok(())
}

/// The workflow's snapshot as last written (`None` before its first finished execution).
/// A manifest or piece that does not decode, or pieces missing under an unchanged
/// manifest, are an [`Error::Decode`].
pub async fn read(kv: &kv::Store, workflow: &str) -> Result<Option<HistorySnapshot>> {
    let key = manifest_key(workflow);
    let at = format!("{}/{key}", kv.name);
    let mut last_revision = None;
    for _ in 0..ATTEMPTS {
        let Some(entry) = kv
            .entry(key.clone())
            .await
            .map_err(|e| js(format!("read the history of {workflow}"), e))?
        else {
            return Ok(None);
        };
        if entry.operation != kv::Operation::Put {
            return Ok(None);
        }
        let manifest =
            HistoryManifest::decode(entry.value.as_ref()).map_err(|e| Error::Decode {
                what: "the history manifest",
                subject: at.clone(),
                reason: e.to_string(),
            })?;
        if manifest.pieces == 0 {
            // A whole snapshot from an older aggregator, or an empty one.
            return Ok(Some(HistorySnapshot {
                workflow: workflow.to_string(),
                tests: manifest.tests,
                updated_at_ms: manifest.updated_at_ms,
                shard_start_ms: manifest.shard_start_ms,
            }));
        }
        let mut got: Vec<Option<bytes::Bytes>> = Vec::with_capacity(manifest.pieces as usize);
        let indexes: Vec<usize> = (0..manifest.pieces as usize).collect();
        for chunk in indexes.chunks(CONCURRENCY) {
            let gets: Vec<_> = chunk
                .iter()
                .map(|&i| kv.get(piece_key(workflow, &manifest.generation, i)))
                .collect();
            for get in futures::future::join_all(gets).await {
                got.push(get.map_err(|e| js(format!("read the history of {workflow}"), e))?);
            }
        }
        if got.iter().any(Option::is_none) {
            if last_revision == Some(entry.revision) {
                return Err(Error::Decode {
                    what: "the history",
                    subject: at,
                    reason: format!(
                        "pieces of generation {} are missing; the next finished execution writes it again",
                        manifest.generation
                    ),
                });
            }
            // Replaced meanwhile: read the new manifest.
            last_revision = Some(entry.revision);
            continue;
        }
        let mut tests = Vec::with_capacity(manifest.test_count as usize);
        for (i, raw) in got.into_iter().enumerate() {
            let raw = raw.unwrap_or_default();
            let piece = HistorySnapshot::decode(raw.as_ref()).map_err(|e| Error::Decode {
                what: "a history piece",
                subject: format!(
                    "{}/{}",
                    kv.name,
                    piece_key(workflow, &manifest.generation, i)
                ),
                reason: e.to_string(),
            })?;
            tests.extend(piece.tests);
        }
        if tests.len() as u64 != manifest.test_count {
            return Err(Error::Decode {
                what: "the history",
                subject: at,
                reason: format!(
                    "its pieces hold {} tests, its manifest says {}",
                    tests.len(),
                    manifest.test_count
                ),
            });
        }
        return Ok(Some(HistorySnapshot {
            workflow: workflow.to_string(),
            tests,
            updated_at_ms: manifest.updated_at_ms,
            shard_start_ms: manifest.shard_start_ms,
        }));
    }
    Err(Error::JetStream {
        what: format!("read the history of {workflow}"),
        reason: format!("it was replaced {ATTEMPTS} times while reading; try again"),
    })
}

impl Bus {
    /// Writes the workflow's duration history (see [`write`]), creating the bucket if it
    /// is missing.
    pub async fn write_history(&self, snapshot: &HistorySnapshot) -> Result<Written> {
        let kv = self.kv(streams::KV_HISTORY).await?;
        write(&kv, snapshot).await
    }

    /// Writes a snapshot given as encoded pieces (see [`write_pieces`]), creating the bucket
    /// if it is missing.
    pub async fn write_history_pieces(&self, pieces: &Pieces) -> Result<Written> {
        let kv = self.kv(streams::KV_HISTORY).await?;
        write_pieces(&kv, pieces).await
    }

    /// The workflow's duration history as the aggregator last wrote it (`None` before its
    /// first finished execution). A value that does not decode is an [`Error::Decode`].
    pub async fn history_snapshot(&self, workflow: &str) -> Result<Option<HistorySnapshot>> {
        let kv = self.kv(streams::KV_HISTORY).await?;
        read(&kv, workflow).await
    }

    /// The workflow's duration history as planners use it: test estimates and the measured
    /// shard start cost; empty before the workflow's first finished execution, and empty
    /// (with a warning) when what is stored does not decode. Only errors worth retrying
    /// (NATS unreachable) are returned.
    pub async fn planning_history(&self, workflow: &str) -> Result<assay_plan::History> {
        let snapshot = match self.history_snapshot(workflow).await {
            Ok(Some(snapshot)) => snapshot,
            Ok(None) => return Ok(assay_plan::History::new()),
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => {
                warn!(workflow, error = %e, "duration history unreadable; planning without it");
                return Ok(assay_plan::History::new());
            }
        };
        Ok(to_planning(snapshot))
    }
}

/// A snapshot as the planner's [`assay_plan::History`].
pub fn to_planning(snapshot: HistorySnapshot) -> assay_plan::History {
    let mut history: assay_plan::History = snapshot
        .tests
        .into_iter()
        .map(|t| {
            let estimate = assay_plan::Estimate {
                mean_ms: t.mean_ms,
                p90_ms: t.p90_ms as f64,
            };
            (t.id, estimate)
        })
        .collect();
    if snapshot.shard_start_ms > 0.0 {
        history.set_shard_start_ms(snapshot.shard_start_ms);
    }
    history
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pieces `tests` are cut into (decoded back) and how many were left out.
    fn split(tests: Vec<TestEstimate>) -> (Vec<Vec<TestEstimate>>, usize) {
        let mut encoder = PieceEncoder::new("w", 0, 0.0);
        for t in tests {
            encoder.push(t);
        }
        let pieces = encoder.finish();
        let decoded = pieces
            .encoded
            .iter()
            .map(|bytes| HistorySnapshot::decode(&bytes[..]).unwrap().tests)
            .collect();
        (decoded, pieces.too_large)
    }

    fn estimate(id: String) -> TestEstimate {
        TestEstimate {
            id,
            mean_ms: 12.5,
            p90_ms: 20,
        }
    }

    #[test]
    fn pieces_are_bounded_by_count_and_bytes_and_keep_every_test_in_order() {
        let tests: Vec<_> = (0..4_500).map(|i| estimate(format!("t{i}"))).collect();
        let (pieces, dropped) = split(tests.clone());
        assert_eq!(dropped, 0);
        assert_eq!(
            pieces.iter().map(Vec::len).collect::<Vec<_>>(),
            [2_000, 2_000, 500]
        );
        assert_eq!(pieces.concat(), tests);

        // 1,000-character ids: the byte limit cuts first.
        let long: Vec<_> = (0..600).map(|i| estimate(format!("{i:0>1000}"))).collect();
        let (pieces, _) = split(long.clone());
        assert!(pieces.len() > 2, "{}", pieces.len());
        for p in &pieces {
            let encoded = HistorySnapshot {
                tests: p.clone(),
                ..Default::default()
            }
            .encoded_len();
            assert!(encoded <= PIECE_BYTES, "{encoded}");
        }
        assert_eq!(pieces.concat(), long);
    }

    #[test]
    fn a_test_too_large_for_any_piece_is_left_out() {
        let tests = vec![
            estimate("a".into()),
            estimate("x".repeat(PIECE_BYTES)),
            estimate("b".into()),
        ];
        let (pieces, dropped) = split(tests);
        assert_eq!(dropped, 1);
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].len(), 2);
    }

    #[test]
    fn no_tests_no_pieces() {
        assert_eq!(split(Vec::new()), (Vec::new(), 0));
    }

    #[test]
    fn a_manifest_reads_as_a_snapshot_and_an_old_snapshot_as_a_manifest() {
        let manifest = HistoryManifest {
            workflow: "w".into(),
            tests: Vec::new(),
            updated_at_ms: 7,
            shard_start_ms: 3.5,
            generation: "g".into(),
            pieces: 2,
            test_count: 10,
        };
        let old = HistorySnapshot::decode(manifest.encode_to_vec().as_slice()).unwrap();
        assert_eq!(old.workflow, "w");
        assert!(old.tests.is_empty());
        assert_eq!(old.shard_start_ms, 3.5);
        let whole = HistorySnapshot {
            workflow: "w".into(),
            tests: vec![estimate("a".into())],
            updated_at_ms: 7,
            shard_start_ms: 0.0,
        };
        let read = HistoryManifest::decode(whole.encode_to_vec().as_slice()).unwrap();
        assert_eq!(read.pieces, 0);
        assert_eq!(read.tests, whole.tests);
    }
}
