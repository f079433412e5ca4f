//! The tail of a log, for error messages.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

/// The last `n` lines of `text`, joined with `\n`.
pub fn tail_text(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The last `n` lines of the file at `path`, lossily decoded; the file is
/// streamed, so a large log costs `n` lines of memory.
pub fn try_tail_lines(path: &Path, n: usize) -> io::Result<String> {
    let mut reader = BufReader::new(std::fs::File::open(path)?);
    let mut tail: VecDeque<Vec<u8>> = VecDeque::with_capacity(n.min(1024) + 1);
    loop {
        let mut line = Vec::new();
        if reader.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        if line.last() == Some(&b'\n') {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
        }
        tail.push_back(line);
        if tail.len() > n {
            tail.pop_front();
        }
    }
    let tail: Vec<String> = tail
        .iter()
        .map(|l| String::from_utf8_lossy(l).into_owned())
        .collect();
    Ok(tail.join("\n"))
}

/// [`try_tail_lines`], empty when the file cannot be read (not there yet).
pub fn tail_lines(path: &Path, n: usize) -> String {
    try_tail_lines(path, n).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_of_files_and_text() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        std::fs::write(&p, b"one\ntwo\r\nthr\xffee\nfour").unwrap();
        assert_eq!(tail_lines(&p, 2), "thr\u{fffd}ee\nfour");
        assert_eq!(tail_lines(&p, 10), "one\ntwo\nthr\u{fffd}ee\nfour");
        assert_eq!(tail_lines(&p, 0), "");
        assert_eq!(tail_lines(&d.path().join("absent"), 3), "");
        assert!(try_tail_lines(&d.path().join("absent"), 3).is_err());
        assert_eq!(tail_text("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail_text("", 2), "");
    }
}
