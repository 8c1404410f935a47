//! Field conditions' JSON paths: parsing and the canonical spelling.

use std::fmt;

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathSeg {
    Key(String),
    Index(usize),
}

/// A parsed JSON path: `.a.b`, `.a[0]`, `.a["key.with/dots"]` (or single quotes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldPath(pub Vec<PathSeg>);

impl FieldPath {
    /// Parses a path; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<FieldPath, String> {
        let bad = |why: &str| format!("invalid path `{text}`: {why}");
        let mut segs = Vec::new();
        let mut rest = text.trim();
        if !rest.starts_with('.') {
            return Err(bad("a path starts with `.`, e.g. `.spec.replicas`"));
        }
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('.') {
                let end = after.find(['.', '[']).unwrap_or(after.len());
                let key = &after[..end];
                if key.is_empty() {
                    return Err(bad("empty key after `.`"));
                }
                if key.contains([']', '"', '\'', ' ']) {
                    return Err(bad(&format!(
                        "key `{key}` needs brackets and quotes: `[\"{key}\"]`"
                    )));
                }
                segs.push(PathSeg::Key(key.to_string()));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix('[') {
                let close = after.find(']').ok_or_else(|| bad("`[` without `]`"))?;
                let inner = &after[..close];
                let quoted = ['"', '\''].into_iter().find_map(|q| {
                    inner
                        .strip_prefix(q)
                        .and_then(|s| s.strip_suffix(q))
                        .map(str::to_string)
                });
                match quoted {
                    Some(key) if !key.is_empty() => segs.push(PathSeg::Key(key)),
                    Some(_) => return Err(bad("empty key in brackets")),
                    None => {
                        let i = inner.parse::<usize>().map_err(|_| {
                            bad(&format!("`[{inner}]` is neither an index nor a quoted key"))
                        })?;
                        segs.push(PathSeg::Index(i));
                    }
                }
                rest = &after[close + 1..];
            } else {
                return Err(bad(&format!("unexpected `{rest}`")));
            }
        }
        if segs.is_empty() {
            return Err(bad("name a field, e.g. `.spec.replicas`"));
        }
        Ok(FieldPath(segs))
    }
}

impl fmt::Display for FieldPath {
    /// The canonical spelling: `.a.b[0]["x.y"]` (brackets only where a key needs them).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for seg in &self.0 {
            match seg {
                PathSeg::Index(i) => write!(f, "[{i}]")?,
                PathSeg::Key(k) if k.contains(['.', '[', ']', '"', '\'', ' ']) => {
                    write!(f, "[\"{k}\"]")?
                }
                PathSeg::Key(k) => write!(f, ".{k}")?,
            }
        }
        Ok(())
    }
}
