//! The `ar` container of a .deb: the common format (`!<arch>\n`, 60-byte member
//! headers, 2-byte alignment) with dpkg's conventions: names without a
//! trailing `/`, owner 0/0, mode 100644.

use std::io::Write;

use anyhow::{bail, Result};

pub(crate) const MAGIC: &[u8; 8] = b"!<arch>\n";

/// Writes one member; `mtime` is the release epoch.
pub(crate) fn write_member(
    out: &mut impl Write,
    name: &str,
    mtime: u64,
    data: &[u8],
) -> Result<()> {
    if name.len() > 16 || name.contains('/') || name.contains(' ') {
        bail!("ar member name {name:?} must be at most 16 bytes without '/' or spaces");
    }
    let header = format!(
        "{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n",
        name,
        mtime,
        0,
        0,
        "100644",
        data.len()
    );
    debug_assert_eq!(header.len(), 60);
    out.write_all(header.as_bytes())?;
    out.write_all(data)?;
    if data.len() % 2 == 1 {
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// Splits an ar archive into `(name, data)` members.
pub(crate) fn read_members(bytes: &[u8]) -> Result<Vec<(String, &[u8])>> {
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        bail!("not an ar archive (missing !<arch> magic)");
    }
    let mut pos = 8;
    let mut members = Vec::new();
    while pos < bytes.len() {
        if bytes.len() - pos < 60 {
            bail!("truncated ar member header at offset {pos}");
        }
        let header = &bytes[pos..pos + 60];
        if &header[58..60] != b"`\n" {
            bail!("bad ar member header at offset {pos}");
        }
        let name = String::from_utf8_lossy(&header[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: usize = std::str::from_utf8(&header[48..58])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("bad ar member size at offset {pos}"))?;
        let start = pos + 60;
        let end = start.checked_add(size).filter(|&e| e <= bytes.len());
        let Some(end) = end else {
            bail!("ar member {name} runs past the end of the archive")
        };
        members.push((name, &bytes[start..end]));
        pos = end + (size % 2);
    }
    Ok(members)
}
