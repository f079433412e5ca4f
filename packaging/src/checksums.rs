//! `SHA256SUMS`, in the format `sha256sum -c` reads.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::util::{sha256_file, write_atomically};

/// Writes `<sha256>  <name>` lines, sorted by name, for `files`; names are
/// relative to the directory of `out` (every file must live under it), so
/// `sha256sum -c SHA256SUMS` works from that directory.
pub fn write_sha256sums(files: &[impl AsRef<Path>], out: &Path) -> Result<()> {
    let base = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let base = base
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", base.display()))?;
    let mut lines = Vec::new();
    for f in files {
        let f = f.as_ref();
        let abs = f
            .canonicalize()
            .with_context(|| format!("SHA256SUMS: cannot read {}", f.display()))?;
        let Ok(rel) = abs.strip_prefix(&base) else {
            bail!(
                "SHA256SUMS: {} is not under {}; move it next to the checksum file",
                f.display(),
                base.display()
            );
        };
        let name = rel
            .to_str()
            .filter(|n| !n.contains('\n') && !n.contains('\\'));
        let Some(name) = name else {
            bail!("SHA256SUMS: file name {} is not plain UTF-8", rel.display())
        };
        lines.push((name.to_string(), sha256_file(&abs)?));
    }
    lines.sort();
    if let Some(w) = lines.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!("SHA256SUMS: {} is listed twice", w[0].0);
    }
    write_atomically(
        out,
        |w| {
            for (name, digest) in &lines {
                writeln!(w, "{digest}  {name}")?;
            }
            Ok(())
        },
        |_| Ok(()),
    )
}
