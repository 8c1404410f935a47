//! Reading an execution's test cases and a workflow's test history a page at a time, so that
//! no answer outgrows one gRPC message however large the suite.
//!
//! Pages are keyset-paginated: a page ends at a unique key — `(shard, attempt, test id)` for
//! test cases, the test id for history — and the next one starts after it, reading the
//! primary key index from there (no `OFFSET` scans). The key travels to the client inside
//! an opaque token (base64 of a small JSON array) that also names what it pages through, so
//! a token of another execution or workflow is refused rather than misread.

use assay_proto::v1::{ExecutionDetail, TestHistory};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use prost::Message;
use rusqlite::{Connection, params};

use crate::{Error, Result, history, view};

/// A page holds at most this many items, whatever the caller asks.
pub const MAX_PAGE_SIZE: u32 = 10_000;
/// A page's items (test cases or history rows) add up to at most this many encoded bytes,
/// leaving room for the rest of the answer under gRPC's usual 4 MiB message limit. A single
/// item larger than this still makes a page of its own.
pub const PAGE_BYTES: usize = 3 * 1024 * 1024;

/// Bytes an item adds to an answer beyond its own encoding (field tag and length prefix).
const ITEM_OVERHEAD: usize = 8;

/// Which page to read: how many items at most and where to start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    /// At most this many items; 0: as many as fit in [`PAGE_BYTES`]. Capped at
    /// [`MAX_PAGE_SIZE`].
    pub size: u32,
    /// Empty for the first page, else the `next_page_token` of the previous one.
    pub token: String,
}

impl Page {
    /// The number of items this page may hold.
    fn limit(&self) -> usize {
        match self.size {
            0 => usize::MAX,
            n => n.min(MAX_PAGE_SIZE) as usize,
        }
    }
}

/// Counts what goes into a page and says when it is full.
struct Filler {
    limit: usize,
    taken: usize,
    bytes: usize,
}

impl Filler {
    fn new(page: &Page) -> Filler {
        Filler {
            limit: page.limit(),
            taken: 0,
            bytes: 0,
        }
    }

    /// Takes an item of `len` encoded bytes unless the page is full (by count, or by bytes
    /// once it holds one item).
    fn take(&mut self, len: usize) -> bool {
        let len = len + ITEM_OVERHEAD;
        if self.taken >= self.limit || (self.taken > 0 && self.bytes + len > PAGE_BYTES) {
            return false;
        }
        self.taken += 1;
        self.bytes += len;
        true
    }
}

const CASES: &str = "e1";
const HISTORY: &str = "h1";

/// A token longer than this is refused before decoding (a test id in a token is at most a
/// few KiB).
const MAX_TOKEN_BYTES: usize = 64 * 1024;

fn token_error(detail: impl Into<String>) -> Error {
    Error::invalid("page token", detail)
}

/// The token as an error message quotes it: its start only.
fn shown(token: &str) -> String {
    match token.char_indices().nth(40) {
        Some((end, _)) => format!("{:?}…", &token[..end]),
        None => format!("{token:?}"),
    }
}

/// Decodes a token's JSON array, checking its kind.
fn open_token<T: serde::de::DeserializeOwned>(token: &str, kind: &str) -> Result<T> {
    const HINT: &str =
        "pass the next_page_token of the previous answer unchanged, or none for the first page";
    if token.len() > MAX_TOKEN_BYTES {
        return Err(token_error(format!(
            "{} is {} bytes, longer than any this server hands out; {HINT}",
            shown(token),
            token.len()
        )));
    }
    let token = token.trim();
    let bytes = URL_SAFE_NO_PAD
        .decode(token.as_bytes())
        .map_err(|e| token_error(format!("{} is not base64 ({e}); {HINT}", shown(token))))?;
    let (found, rest): (String, serde_json::Value) =
        match serde_json::from_slice::<Vec<serde_json::Value>>(&bytes) {
            Ok(mut parts) if !parts.is_empty() => {
                let found = parts.remove(0);
                (
                    found.as_str().unwrap_or_default().to_owned(),
                    serde_json::Value::Array(parts),
                )
            }
            _ => {
                return Err(token_error(format!(
                    "{} is not a page token of this server; {HINT}",
                    shown(token)
                )));
            }
        };
    if found != kind {
        let what = match found.as_str() {
            CASES => "test cases of an execution",
            HISTORY => "test history",
            _ => "something this server does not know",
        };
        let wanted = if kind == CASES {
            "test cases"
        } else {
            "test history"
        };
        return Err(token_error(format!(
            "{} pages through {what}, not {wanted}; {HINT}",
            shown(token)
        )));
    }
    serde_json::from_value(rest)
        .map_err(|e| token_error(format!("{} is damaged ({e}); {HINT}", shown(token))))
}

fn seal_token<T: serde::Serialize>(kind: &str, key: T) -> String {
    let mut parts = vec![serde_json::Value::from(kind)];
    if let Ok(serde_json::Value::Array(fields)) = serde_json::to_value(key) {
        parts.extend(fields);
    }
    URL_SAFE_NO_PAD.encode(serde_json::Value::Array(parts).to_string())
}

/// Where a page of test cases ended: `(execution, shard, attempt, test id)`.
type CaseKey = (String, u32, u32, String);

/// A page of an execution's test cases under the full execution head; `None` until the plan
/// record has arrived. Read in one transaction, so the counters and shard summaries agree
/// with the test cases of the page.
pub(crate) fn execution_page(
    conn: &mut Connection,
    id: &str,
    page: &Page,
) -> Result<Option<ExecutionDetail>> {
    let after: Option<CaseKey> = if page.token.is_empty() {
        None
    } else {
        let key: CaseKey = open_token(&page.token, CASES)?;
        if key.0 != id {
            return Err(token_error(format!(
                "the token pages through execution {}, not {id}; start again without a token",
                key.0
            )));
        }
        Some(key)
    };
    let tx = conn.transaction()?;
    let Some(mut detail) = view::execution_head(&tx, id)? else {
        return Ok(None);
    };
    // A shard's tests: its latest attempt's own, plus the work-queue batches any of its
    // attempts reported first (each batch is stored once), in primary key order.
    let mut stmt = tx.prepare(
        "SELECT attempt, test_id, name, classname, file, status, duration_ms, failure_message,
             output, attempts, flaky
         FROM test_cases
         WHERE execution_id = ?1 AND shard_index = ?2 AND late = 0
             AND (attempt = ?3 OR queue_batch IS NOT NULL)
             AND (attempt, test_id) > (?4, ?5)
         ORDER BY attempt, test_id
         LIMIT ?6",
    )?;
    let mut filler = Filler::new(page);
    // The last case taken, and whether a case was left for the next page.
    let mut last: Option<CaseKey> = None;
    let mut more = false;
    'shards: for shard in &mut detail.shards {
        let Some(summary) = shard.summary.as_ref() else {
            continue;
        };
        let (index, latest) = (summary.index, summary.attempt);
        let (from_attempt, from_test) = match &after {
            Some((_, s, _, _)) if *s > index => continue,
            Some((_, s, attempt, test)) if *s == index => (i64::from(*attempt), test.as_str()),
            _ => (-1, ""),
        };
        // One more than fits, to learn whether the page ends here.
        let want = filler.limit.saturating_sub(filler.taken).saturating_add(1);
        let want = i64::try_from(want).unwrap_or(i64::MAX);
        let mut rows = stmt.query(params![id, index, latest, from_attempt, from_test, want])?;
        while let Some(row) = rows.next()? {
            let attempt: u32 = row.get(0)?;
            let case = view::test_case(row, 1)?;
            if !filler.take(case.encoded_len()) {
                more = true;
                break 'shards;
            }
            last = Some((id.to_owned(), index, attempt, case.id.clone()));
            shard.tests.push(case);
        }
    }
    drop(stmt);
    tx.commit()?;
    detail.next_page_token = match last {
        Some(key) if more => seal_token(CASES, key),
        _ => String::new(),
    };
    Ok(Some(detail))
}

/// Where a page of history ended: `(workflow, test filter, test id)`.
type HistoryKey = (String, String, String);

/// A page of a workflow's test history (one test when `test` is given), slowest first
/// within the page, and the token of the next page (empty after the last).
pub(crate) fn history_page(
    conn: &Connection,
    workflow: &str,
    test: Option<&str>,
    page: &Page,
) -> Result<(Vec<TestHistory>, String)> {
    let filter = test.unwrap_or_default();
    let after = if page.token.is_empty() {
        String::new()
    } else {
        let key: HistoryKey = open_token(&page.token, HISTORY)?;
        if key.0 != workflow || key.1 != filter {
            return Err(token_error(format!(
                "the token pages through the history of workflow {:?}{}, not {workflow:?}{}; start again without a token",
                key.0,
                if key.1.is_empty() {
                    String::new()
                } else {
                    format!(" test {:?}", key.1)
                },
                if filter.is_empty() {
                    String::new()
                } else {
                    format!(" test {filter:?}")
                },
            )));
        }
        key.2
    };
    let mut filler = Filler::new(page);
    let want = i64::try_from(filler.limit.saturating_add(1)).unwrap_or(i64::MAX);
    let mut stmt = conn.prepare(&format!(
        "SELECT {} FROM test_history
         WHERE workflow = ?1 AND (?2 IS NULL OR test_id = ?2) AND test_id > ?3
         ORDER BY test_id LIMIT ?4",
        history::COLUMNS
    ))?;
    let mut rows = stmt.query(params![workflow, test, after, want])?;
    let mut out = Vec::new();
    let mut more = false;
    while let Some(row) = rows.next()? {
        let t = history::from_row(row)?;
        if !filler.take(t.encoded_len()) {
            more = true;
            break;
        }
        out.push(t);
    }
    let next = match out.last() {
        Some(last) if more => seal_token(
            HISTORY,
            (workflow.to_owned(), filter.to_owned(), last.test_id.clone()),
        ),
        _ => String::new(),
    };
    history::slowest_first(&mut out);
    Ok((out, next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let key: CaseKey = ("01EXEC".into(), 3, 2, "a/b c\n\"d\"".into());
        let token = seal_token(CASES, key.clone());
        assert_eq!(open_token::<CaseKey>(&token, CASES).unwrap(), key);
        let key: HistoryKey = ("wf".into(), String::new(), "t".into());
        let token = seal_token(HISTORY, key.clone());
        assert_eq!(open_token::<HistoryKey>(&token, HISTORY).unwrap(), key);
    }

    #[test]
    fn malformed_tokens_say_what_is_wrong() {
        let err = |token: &str| open_token::<CaseKey>(token, CASES).unwrap_err().to_string();
        assert!(
            err("not base64!").contains("not base64"),
            "{}",
            err("not base64!")
        );
        let json = URL_SAFE_NO_PAD.encode("{}");
        assert!(err(&json).contains("not a page token"), "{}", err(&json));
        let history = seal_token(HISTORY, ("wf", "", "t"));
        assert!(err(&history).contains("pages through test history, not test cases"));
        let short = URL_SAFE_NO_PAD.encode(r#"["e1","01EXEC",1]"#);
        assert!(err(&short).contains("damaged"), "{}", err(&short));
        let wrong_type = URL_SAFE_NO_PAD.encode(r#"["e1","01EXEC","x",1,"t"]"#);
        assert!(err(&wrong_type).contains("damaged"));
        let long = "A".repeat(MAX_TOKEN_BYTES + 1);
        let msg = err(&long);
        assert!(msg.contains("longer than") && msg.len() < 400, "{msg}");
        assert!(matches!(
            open_token::<CaseKey>("%%", CASES),
            Err(Error::Invalid {
                what: "page token",
                ..
            })
        ));
    }

    #[test]
    fn a_page_fills_by_count_and_by_bytes_but_takes_one_item_always() {
        let mut f = Filler::new(&Page {
            size: 2,
            token: String::new(),
        });
        assert!(f.take(10) && f.take(10) && !f.take(10));
        let mut f = Filler::new(&Page::default());
        assert!(
            f.take(PAGE_BYTES * 2),
            "one oversized item still makes a page"
        );
        assert!(!f.take(1));
        let mut f = Filler::new(&Page {
            size: u32::MAX,
            token: String::new(),
        });
        assert_eq!(f.limit, MAX_PAGE_SIZE as usize);
        assert!(f.take(PAGE_BYTES / 2) && !f.take(PAGE_BYTES / 2));
    }
}
