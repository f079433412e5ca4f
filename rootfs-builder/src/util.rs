//! Outputs are written to a temp path next to the destination and renamed
//! into place, so a crash never leaves a half-written artifact (the helpers
//! are host-support's).

use anyhow::Result;
use std::fs::File;
use std::path::Path;

pub(crate) use host_support::fs::parent_dir;

/// [`host_support::fs::write_atomic_with`] without a check before the rename.
pub(crate) fn write_atomically(out: &Path, fill: impl FnOnce(&File) -> Result<()>) -> Result<()> {
    host_support::fs::write_atomic_with(out, fill, |_| Ok(()))
}
