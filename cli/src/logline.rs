//! `[shard 2] line` rendering of log chunks (stderr in red, system lines in cyan).

use assay_proto::{LogChunk, LogStream};

use crate::style::{Color, Palette};

/// The lines of one chunk, each prefixed with its shard. A chunk holds whole lines; a
/// trailing newline does not make an extra empty line.
pub fn chunk_lines(chunk: &LogChunk, palette: &Palette) -> Vec<String> {
    let text = String::from_utf8_lossy(&chunk.data);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    if text.is_empty() && chunk.data.is_empty() {
        return Vec::new();
    }
    let prefix = palette.paint(Color::Dim, &format!("[shard {}]", chunk.shard_index));
    let color = match chunk.stream() {
        LogStream::Stderr => Color::Red,
        LogStream::System => Color::Cyan,
        LogStream::Stdout | LogStream::Unspecified => Color::Plain,
    };
    text.split('\n')
        .map(|line| {
            let line = line.strip_suffix('\r').unwrap_or(line);
            format!("{prefix} {}", palette.paint(color, line))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(data: &str, stream: LogStream) -> LogChunk {
        LogChunk {
            shard_index: 2,
            stream: stream as i32,
            data: data.as_bytes().to_vec(),
            ..Default::default()
        }
    }

    #[test]
    fn splits_lines_and_prefixes_shard() {
        let p = Palette::plain();
        assert_eq!(
            chunk_lines(&chunk("a\r\nb\n", LogStream::Stdout), &p),
            vec!["[shard 2] a", "[shard 2] b"]
        );
        assert_eq!(
            chunk_lines(&chunk("one", LogStream::Stdout), &p),
            vec!["[shard 2] one"]
        );
        assert!(chunk_lines(&chunk("", LogStream::Stdout), &p).is_empty());
        assert_eq!(
            chunk_lines(&chunk("\n", LogStream::Stdout), &p),
            vec!["[shard 2] "]
        );
    }

    #[test]
    fn stderr_is_coloured() {
        let p = Palette { enabled: true };
        let line = &chunk_lines(&chunk("oops", LogStream::Stderr), &p)[0];
        assert!(line.contains("oops") && line.contains("\u{1b}["));
    }
}
