//! Atomic output files, through host-support, with a buffered writer.

use std::fs;
use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::{Context, Result};

pub(crate) use host_support::date::{rfc2822, rfc3339};
pub(crate) use host_support::hash::sha256_file;

/// Writes `out` through `fill` into a temporary file in the same directory and
/// renames it into place, so a failure never leaves a partial output behind.
/// `check` runs on the finished temporary file before the rename: an output
/// that fails it never appears under its final name.
pub(crate) fn write_atomically(
    out: &Path,
    fill: impl FnOnce(&mut BufWriter<&fs::File>) -> Result<()>,
    check: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    host_support::fs::write_atomic_with(
        out,
        |file| {
            let mut w = BufWriter::new(file);
            fill(&mut w)?;
            w.flush()
                .with_context(|| format!("cannot write {}", out.display()))
        },
        check,
    )
}
