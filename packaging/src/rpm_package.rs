//! The RPM, built with the pure-Rust `rpm` crate (v4 format, zstd payload as
//! Fedora and RHEL 8+ use (rpm >= 4.14),
//! SHA-256 header and payload digests, no signature). Reproducible: build time
//! and every file mtime are the release epoch, owners root/root, no build host.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::layout::{EntryKind, Layout};
use crate::safety::{check_host_safety_layout, check_host_safety_rpm};
use crate::util::write_atomically;

/// The header fields of the RPM.
#[derive(Clone, Debug)]
pub struct RpmMeta {
    /// `Name`, e.g. `kata-containers-static`.
    pub name: String,
    /// `Version` (no `-`; see [`rpm_version`]).
    pub version: String,
    /// `Release`, e.g. `1`.
    pub release: String,
    /// SPDX expression for `License`.
    pub license: String,
    /// `x86_64`.
    pub arch: String,
    pub summary: String,
    pub description: String,
    pub url: Option<String>,
    pub vendor: Option<String>,
    pub packager: Option<String>,
    /// Package names for `Requires` (unversioned).
    pub requires: Vec<String>,
}

impl RpmMeta {
    /// The metadata of this project's static package.
    pub fn kata_static(release_version: &str) -> Result<Self> {
        Ok(Self {
            name: "kata-containers-static".into(),
            version: rpm_version(release_version)?,
            release: "1".into(),
            license: "Apache-2.0 AND GPL-2.0-only".into(),
            arch: "x86_64".into(),
            summary: "Kata Containers runtime, shim, guest kernel and images".into(),
            description: "Lightweight virtual machines that feel and perform like containers: the \
                          containerd shim, kata-runtime, the guest kernel and guest images, installed \
                          as one self-contained tree under /opt/kata."
                .into(),
            url: Some("https://katacontainers.io/".into()),
            vendor: None,
            packager: None,
            // Fedora and RHEL name QEMU's x86 system emulator differently; both
            // provide the binary the runtime executes.
            requires: vec!["/usr/bin/qemu-system-x86_64".into()],
        })
    }
}

/// A release version as an RPM version: `-` is not allowed there, so
/// pre-release separators become `~` (which sorts before the release, as in Debian).
pub fn rpm_version(release_version: &str) -> Result<String> {
    let v = release_version.replace('-', "~");
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+~^".contains(c))
    {
        bail!("release version {release_version:?} cannot be an RPM version ([A-Za-z0-9._+~^])");
    }
    Ok(v)
}

/// Writes the RPM for `layout` to `out` (temp file, read back, host-safety
/// checked, renamed into place).
pub fn write_rpm(layout: &Layout, meta: &RpmMeta, out: &Path, epoch: u64) -> Result<()> {
    check_host_safety_layout(layout)?;
    let epoch32 =
        u32::try_from(epoch).context("SOURCE_DATE_EPOCH does not fit RPM's 32-bit timestamps")?;
    // The payload at the tarball's zstd level (xz here took 6x longer on a
    // 128 MiB image). The `rpm` crate's `zstdmt` feature runs zstd's
    // multi-threaded mode, whose bytes do not depend on the core count
    // (`compress`).
    let config = rpm::BuildConfig::v4()
        .compression(rpm::CompressionWithLevel::Zstd(crate::compress::ZSTD_LEVEL))
        .source_date(epoch32);
    let mut builder = rpm::PackageBuilder::new(
        &meta.name,
        &meta.version,
        &meta.license,
        &meta.arch,
        &meta.summary,
    );
    builder
        .using_config(config)
        .release(meta.release.clone())
        .description(meta.description.clone());
    if let Some(u) = &meta.url {
        builder.url(u.clone());
    }
    if let Some(v) = &meta.vendor {
        builder.vendor(v.clone());
    }
    if let Some(p) = &meta.packager {
        builder.packager(p.clone());
    }
    for r in &meta.requires {
        builder.requires(rpm::Dependency::any(r.clone()));
    }
    let mtime = rpm::Timestamp(epoch32);
    let prefix = layout.prefix();
    // The prefix directory itself is owned by the package; /opt is the
    // distribution's (filesystem package).
    builder
        .with_dir_entry(
            rpm::FileOptions::dir(prefix)
                .permissions(0o755)
                .modified_at(mtime),
        )
        .context("RPM: prefix directory")?;
    for (rel, kind) in layout.entries() {
        let dest = format!("{prefix}/{rel}");
        let added = match kind {
            EntryKind::Dir { mode } => builder.with_dir_entry(
                rpm::FileOptions::dir(dest.clone())
                    .permissions(*mode as u16)
                    .modified_at(mtime),
            ),
            EntryKind::File { source, mode } => builder.with_file(
                source,
                rpm::FileOptions::new(dest.clone())
                    .permissions(*mode as u16)
                    .modified_at(mtime),
            ),
            EntryKind::Contents { bytes, mode } => builder.with_file_contents(
                bytes.clone(),
                rpm::FileOptions::new(dest.clone())
                    .permissions(*mode as u16)
                    .modified_at(mtime),
            ),
            EntryKind::Symlink { target } => builder.with_symlink(
                rpm::FileOptions::symlink(dest.clone(), target.clone())
                    .permissions(0o777)
                    .modified_at(mtime),
            ),
        };
        added.with_context(|| format!("RPM: {dest}"))?;
    }
    // The binaries on PATH; /usr/bin itself is the distribution's.
    for (link, target) in layout.path_links()? {
        let dest = format!("/{link}");
        builder
            .with_symlink(
                rpm::FileOptions::symlink(dest.clone(), target)
                    .permissions(0o777)
                    .modified_at(mtime),
            )
            .with_context(|| format!("RPM: {dest}"))?;
    }
    let package = builder.build().context("RPM build failed")?;
    write_atomically(
        out,
        |w| package.write(w).context("cannot serialise RPM"),
        |tmp| {
            let back = rpm::Package::open(tmp).context("cannot read back the RPM")?;
            back.verify_digests().context("RPM digests do not verify")?;
            check_host_safety_rpm(tmp, prefix)
        },
    )
    .with_context(|| format!("cannot write RPM {}", out.display()))
}
