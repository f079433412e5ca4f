//! The static tarball, `kata-static-<version>-x86_64.tar.zst`.
//!
//! Members are named like upstream's (`./opt/kata/bin/kata-runtime`), created by
//! `tar -C <content> -c .`), except that the archive carries no `./` member of
//! its own: unpacking with `tar -C /` must not reset the mode or mtime of the
//! host's `/`.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::layout::{EntryKind, Layout};
use crate::safety::{check_host_safety_layout, check_host_safety_tarball, tar_members};
use crate::util::write_atomically;
use host_support::tar::{Kind as TarKind, Writer as TarWriter};

/// Upstream's file name for the static tarball.
pub fn tarball_name(version: &str) -> String {
    format!("kata-static-{version}-x86_64.tar.zst")
}

/// Writes the entries (paths relative to `/`, already sorted) as tar members
/// named `./<path>`, all with modification time `epoch`.
pub(crate) fn write_tree_tar<W: Write>(
    tar: &mut TarWriter<W>,
    entries: &[(String, &EntryKind)],
    epoch: u64,
) -> Result<()> {
    for (path, kind) in entries {
        let name = format!("./{path}");
        match kind {
            EntryKind::Dir { mode } => tar.append(&name, *mode, epoch, TarKind::Dir)?,
            EntryKind::Symlink { target } => tar.append(
                &name,
                0o777,
                epoch,
                TarKind::Symlink {
                    target: target.as_bytes(),
                },
            )?,
            EntryKind::Contents { bytes, mode } => tar.append(
                &name,
                *mode,
                epoch,
                TarKind::File {
                    size: bytes.len() as u64,
                    data: Box::new(&bytes[..]),
                },
            )?,
            EntryKind::File { source, mode } => {
                let file = std::fs::File::open(source)
                    .with_context(|| format!("{path}: cannot read source {}", source.display()))?;
                let size = file.metadata()?.len();
                tar.append(
                    &name,
                    *mode,
                    epoch,
                    TarKind::File {
                        size,
                        data: Box::new(file),
                    },
                )
                .with_context(|| format!("{path}: from {}", source.display()))?;
            }
        }
    }
    Ok(())
}

/// Writes `layout` as a zstd-compressed tar to `out` (temp file, read back,
/// host-safety checked, renamed into place).
pub fn write_tarball(layout: &Layout, out: &Path, epoch: u64) -> Result<()> {
    check_host_safety_layout(layout)?;
    let entries: Vec<(String, &EntryKind)> = layout
        .archive_entries()
        .into_iter()
        .map(|e| (e.path, e.kind))
        .collect();
    write_atomically(
        out,
        |w| {
            let encoder = crate::compress::zstd_encoder(w, crate::compress::workers())?;
            let mut tar = TarWriter::new(encoder);
            write_tree_tar(&mut tar, &entries, epoch)?;
            tar.finish()?.finish()?;
            Ok(())
        },
        |tmp| {
            check_host_safety_tarball(tmp, layout.prefix())?;
            // What was written is what the layout says, in the same order.
            let file = std::fs::File::open(tmp)?;
            let members = tar_members(zstd::stream::Decoder::new(file)?)?;
            let written: Vec<String> = members
                .iter()
                .map(|(p, _)| p.trim_start_matches("./").trim_end_matches('/').to_string())
                .collect();
            let expected: Vec<&String> = entries.iter().map(|(p, _)| p).collect();
            if written.iter().ne(expected.iter().copied()) {
                bail!(
                    "{}: read-back member list differs from the layout",
                    out.display()
                );
            }
            Ok(())
        },
    )
    .with_context(|| format!("cannot write tarball {}", out.display()))
}
