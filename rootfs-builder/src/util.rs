//! Small helpers: outputs are written to a temp path next to the destination
//! and renamed into place, so a crash never leaves a half-written artifact.

use anyhow::{Context, Result};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Creates a temp file next to `out`, lets `fill` write it, makes it 0644 and
/// renames it to `out`. On error the temp file is removed and `out` untouched.
pub(crate) fn write_atomically(out: &Path, fill: impl FnOnce(File) -> Result<()>) -> Result<()> {
    let parent = parent_dir(out);
    let name = out
        .file_name()
        .with_context(|| format!("{}: not a file path", out.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{}.", name.to_string_lossy()))
        .suffix(".tmp")
        .tempfile_in(parent)
        .with_context(|| {
            format!(
                "{}: cannot create a temp file in {}",
                out.display(),
                parent.display()
            )
        })?;
    let file = tmp.as_file().try_clone()?;
    fill(file).with_context(|| format!("{}: cannot write", out.display()))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))?;
    tmp.persist(out)
        .with_context(|| format!("{}: cannot rename into place", out.display()))?;
    Ok(())
}

pub(crate) fn parent_dir(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}
