//! Masking of sensitive values: the values of a workflow's `sensitive: true` parameters are
//! replaced by `***` in every log chunk and test result the runner publishes.
//!
//! Values shorter than [`MIN_SECRET_LEN`] bytes are not masked (masking `1` or `ok` would
//! shred every log); a multi-line value is masked whole and line by line, since a program
//! may print it one line at a time.

use std::sync::Arc;

/// What a masked value turns into.
pub const MASK: &[u8] = assay_spec::MASKED.as_bytes();
/// Shorter values are not masked.
pub const MIN_SECRET_LEN: usize = 4;

/// The values to mask, longest first (so a value containing another is masked whole).
#[derive(Debug, Clone, Default)]
pub struct Masker {
    secrets: Arc<Vec<Vec<u8>>>,
}

impl Masker {
    pub fn new<I: IntoIterator<Item = S>, S: AsRef<str>>(values: I) -> Masker {
        let mut secrets: Vec<Vec<u8>> = Vec::new();
        for v in values {
            let v = v.as_ref();
            let whole = std::iter::once(v).chain(v.lines().map(str::trim));
            for part in whole {
                if part.len() >= MIN_SECRET_LEN && !secrets.iter().any(|s| s == part.as_bytes()) {
                    secrets.push(part.as_bytes().to_vec());
                }
            }
        }
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        Masker {
            secrets: Arc::new(secrets),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.secrets.is_empty()
    }

    /// `data` with every occurrence of a secret replaced by [`MASK`].
    pub fn mask(&self, data: &[u8]) -> Vec<u8> {
        self.scan(data, false).0
    }

    /// For a stream: masks `data` up to where it may end inside a secret that the next
    /// piece completes, and says how many bytes that was; the caller keeps the rest and
    /// sends it in front of the next piece. Masking a stream piece by piece this way gives
    /// what masking it whole would.
    pub fn mask_prefix(&self, data: &[u8]) -> (Vec<u8>, usize) {
        self.scan(data, true)
    }

    fn scan(&self, data: &[u8], streaming: bool) -> (Vec<u8>, usize) {
        if self.secrets.is_empty() {
            return (data.to_vec(), data.len());
        }
        let mut out = Vec::with_capacity(data.len());
        let mut i = 0;
        'outer: while i < data.len() {
            let rest = &data[i..];
            // A longer secret may still complete here: wait for more.
            if streaming
                && self
                    .secrets
                    .iter()
                    .any(|s| s.len() > rest.len() && s.starts_with(rest))
            {
                return (out, i);
            }
            for s in self.secrets.iter() {
                if rest.starts_with(s) {
                    out.extend_from_slice(MASK);
                    i += s.len();
                    continue 'outer;
                }
            }
            out.push(data[i]);
            i += 1;
        }
        (out, data.len())
    }

    pub fn mask_str(&self, text: &str) -> String {
        if self.secrets.is_empty() {
            return text.to_string();
        }
        String::from_utf8_lossy(&self.mask(text.as_bytes())).into_owned()
    }

    /// Masks the text fields of a test result that may carry program output.
    pub fn result(&self, r: &mut assay_proto::TestCaseResult) {
        if self.secrets.is_empty() {
            return;
        }
        for field in [
            &mut r.name,
            &mut r.classname,
            &mut r.file,
            &mut r.failure_message,
            &mut r.output,
        ] {
            *field = self.mask_str(field);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn masks_every_occurrence_longest_first_and_skips_short_values() {
        let m = Masker::new(["hunter22", "hunter22-admin", "ok", "line-one\nline-two"]);
        assert_eq!(
            m.mask_str("pw=hunter22 admin=hunter22-admin ok hunter2"),
            "pw=*** admin=*** ok hunter2"
        );
        assert_eq!(m.mask_str("a line-two b"), "a *** b");
        assert!(Masker::new(["abc"]).is_empty());
    }

    #[test]
    fn a_stream_piece_stops_where_a_secret_may_continue() {
        let m = Masker::new(["s3cr3t-token"]);
        assert_eq!(m.mask_prefix(b"value: s3cr"), (b"value: ".to_vec(), 7));
        assert_eq!(m.mask_prefix(b"s3cr3t-token!"), (b"***!".to_vec(), 13));
        assert_eq!(m.mask_prefix(b"value: x"), (b"value: x".to_vec(), 8));
        let m = Masker::new(["hunter22", "hunter22-admin"]);
        assert_eq!(m.mask_prefix(b"pw hunter22-ad"), (b"pw ".to_vec(), 3));
        assert_eq!(m.mask_prefix(b"pw hunter22 "), (b"pw *** ".to_vec(), 12));
    }

    proptest! {
        /// However a stream is cut into pieces, holding back the unsafe tail masks every
        /// secret, and the masked stream equals the whole text masked at once.
        #[test]
        fn streaming_masks_whatever_the_cuts(
            parts in proptest::collection::vec(prop_oneof![
                Just("TOPSECRET".to_string()),
                Just("TOP".to_string()),
                Just("-2".to_string()),
                "[a-zA-Z ]{0,12}",
            ], 0..12),
            cuts in proptest::collection::vec(0usize..40, 0..8),
        ) {
            let m = Masker::new(["TOPSECRET", "TOPSECRET-2"]);
            let text: String = parts.concat();
            let bytes = text.as_bytes();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            points.sort_unstable();
            let mut out = Vec::new();
            let mut buf: Vec<u8> = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([bytes.len()]) {
                buf.extend_from_slice(&bytes[last..p]);
                last = p;
                let (masked, used) = m.mask_prefix(&buf);
                out.extend(masked);
                buf.drain(..used);
            }
            out.extend(m.mask(&buf));
            let out = String::from_utf8(out).unwrap();
            prop_assert!(!out.contains("TOPSECRET"));
            prop_assert_eq!(out, m.mask_str(&text));
        }
    }
}
