//! The Debian package: `debian-binary`, `control.tar.xz` and `data.tar.xz` in
//! an ar archive, written here so every byte is controlled (member mtimes =
//! epoch, tar owners 0:0, xz preset 6 in fixed blocks (`compress`), no
//! compressor timestamps).
//!
//! Policy files: `/usr/share/doc/<package>/copyright` (machine-readable
//! format), `changelog.Debian.gz` (gzip -9n equivalent) and a lintian
//! overrides file whose every override carries its reason as a comment. No
//! maintainer scripts: the package only drops files under the prefix.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};

use crate::layout::{EntryKind, Layout, DIR_MODE};
use crate::safety::{check_host_safety_deb, check_host_safety_layout, tar_members, MemberKind};
use crate::tarball::write_tree_tar;
use crate::util::{rfc2822, write_atomically};
use host_support::tar::{Kind as TarKind, Writer as TarWriter};

/// The control-file fields and policy documents of the .deb.
#[derive(Clone, Debug)]
pub struct DebMeta {
    /// `Package:`, e.g. `kata-containers-static`.
    pub package: String,
    /// `Version:`, a Debian version (see [`debian_version`]).
    pub version: String,
    /// `Architecture:`, `amd64` for x86_64.
    pub architecture: String,
    /// `Maintainer:`, `Name <email>`.
    pub maintainer: String,
    /// `Depends:` entries, e.g. `qemu-system-x86`.
    pub depends: Vec<String>,
    pub section: String,
    pub priority: String,
    pub homepage: Option<String>,
    /// First line of `Description:`.
    pub summary: String,
    /// Extended description; paragraphs separated by blank lines.
    pub description: String,
    /// `/usr/share/doc/<package>/copyright`, machine-readable format 1.0.
    pub copyright: String,
    /// Distribution of the changelog entry (`unstable`).
    pub distribution: String,
    /// The changelog entry's bullet text.
    pub changelog_text: String,
    /// `/usr/share/lintian/overrides/<package>`; empty for none.
    pub lintian_overrides: String,
}

impl DebMeta {
    /// The metadata of this project's static package, for `version` (the
    /// release version; converted with [`debian_version`]).
    /// `epoch` dates the copyright notices.
    pub fn kata_static(release_version: &str, maintainer: &str, epoch: u64) -> Result<Self> {
        let package = "kata-containers-static".to_string();
        let homepage = "https://katacontainers.io/".to_string();
        Ok(Self {
            version: debian_version(release_version)?,
            architecture: "amd64".into(),
            maintainer: maintainer.into(),
            depends: vec!["qemu-system-x86".into()],
            section: "admin".into(),
            priority: "optional".into(),
            summary: "Kata Containers runtime, shim, guest kernel and images".into(),
            description: "Lightweight virtual machines that feel and perform like containers: \
                          the containerd shim (containerd-shim-kata-v2), kata-runtime, the guest \
                          kernel and the guest images, installed as one self-contained tree \
                          under /opt/kata.\n\nThe default configuration is installed in \
                          /opt/kata/share/defaults/kata-containers/configuration.toml and can be \
                          overridden by /etc/kata-containers/configuration.toml."
                .into(),
            copyright: default_copyright(&homepage, i64::from(host_support::date::year(epoch))),
            distribution: "unstable".into(),
            changelog_text: format!("Release {release_version}, built by `cargo xtask release`."),
            lintian_overrides: default_lintian_overrides(&package),
            homepage: Some(homepage),
            package,
        })
    }

    fn check(&self) -> Result<()> {
        let name_ok = self.package.len() >= 2
            && self
                .package
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
            && self
                .package
                .starts_with(|c: char| c.is_ascii_alphanumeric());
        if !name_ok {
            bail!(
                "DebMeta.package {:?}: Debian package names are [a-z0-9][a-z0-9+.-]+",
                self.package
            );
        }
        check_debian_version(&self.version).context("DebMeta.version")?;
        for (field, value) in [
            ("architecture", &self.architecture),
            ("maintainer", &self.maintainer),
            ("section", &self.section),
            ("priority", &self.priority),
            ("summary", &self.summary),
            ("distribution", &self.distribution),
        ] {
            if value.trim().is_empty() || value.contains('\n') {
                bail!("DebMeta.{field} must be one non-empty line (got {value:?})");
            }
        }
        if !self.maintainer.contains('<') || !self.maintainer.ends_with('>') {
            bail!(
                "DebMeta.maintainer {:?} must be `Name <email>`",
                self.maintainer
            );
        }
        Ok(())
    }

    fn control(&self, installed_size_kib: u64) -> String {
        let mut c = String::new();
        c.push_str(&format!("Package: {}\n", self.package));
        c.push_str(&format!("Version: {}\n", self.version));
        c.push_str(&format!("Architecture: {}\n", self.architecture));
        c.push_str(&format!("Maintainer: {}\n", self.maintainer));
        c.push_str(&format!("Installed-Size: {installed_size_kib}\n"));
        if !self.depends.is_empty() {
            c.push_str(&format!("Depends: {}\n", self.depends.join(", ")));
        }
        c.push_str(&format!("Section: {}\n", self.section));
        c.push_str(&format!("Priority: {}\n", self.priority));
        if let Some(h) = &self.homepage {
            c.push_str(&format!("Homepage: {h}\n"));
        }
        c.push_str(&format!("Description: {}\n", self.summary));
        c.push_str(&format_extended_description(&self.description));
        c
    }

    fn changelog(&self, epoch: u64) -> String {
        format!(
            "{} ({}) {}; urgency=medium\n\n  * {}\n\n -- {}  {}\n",
            self.package,
            self.version,
            self.distribution,
            self.changelog_text,
            self.maintainer,
            rfc2822(epoch)
        )
    }
}

/// A release version as a Debian version: `-` (pre-release separators such as
/// `3.2.0-rc0`) becomes `~` so pre-releases sort before the release, and the
/// package revision `-1` is appended.
pub fn debian_version(release_version: &str) -> Result<String> {
    let v = format!("{}-1", release_version.replace('-', "~"));
    check_debian_version(&v).with_context(|| format!("release version {release_version:?}"))?;
    Ok(v)
}

fn check_debian_version(v: &str) -> Result<()> {
    let upstream = v.rsplit_once('-').map_or(v, |(u, _)| u);
    let ok = upstream.starts_with(|c: char| c.is_ascii_digit())
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || ".+~-".contains(c));
    if !ok {
        bail!("{v:?} is not a Debian version (digits first, then [A-Za-z0-9.+~-])");
    }
    Ok(())
}

/// Extended description lines: one leading space, blank lines as ` .`, and
/// text wrapped below 80 columns.
fn format_extended_description(text: &str) -> String {
    let mut out = String::new();
    for (i, para) in text.split("\n\n").enumerate() {
        if i > 0 {
            out.push_str(" .\n");
        }
        let mut line = String::new();
        for word in para.split_whitespace() {
            if !line.is_empty() && line.len() + 1 + word.len() > 78 {
                out.push_str(&format!(" {line}\n"));
                line.clear();
            }
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
        if !line.is_empty() {
            out.push_str(&format!(" {line}\n"));
        }
    }
    out
}

/// Machine-readable copyright covering what the package ships: this project
/// (Apache-2.0) and the guest kernel and busybox inside the images (GPL-2).
pub fn default_copyright(homepage: &str, year: i64) -> String {
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: kata-containers\n\
         Source: {homepage}\n\
         \n\
         Files: *\n\
         Copyright: 2017-{year} Kata Containers contributors\n\
         License: Apache-2.0\n\
         \n\
         Files: opt/kata/share/kata-containers/*\n\
         Copyright: 1991-{year} Linus Torvalds and the Linux kernel contributors\n \
         1998-{year} Erik Andersen, Rob Landley, Denys Vlasenko and the BusyBox contributors\n \
         2017-{year} Kata Containers contributors\n\
         License: GPL-2 and Apache-2.0\n \
         The guest kernel and the busybox inside the guest images are GPL-2; the\n \
         guest agent inside the images is Apache-2.0.\n\
         \n\
         License: Apache-2.0\n \
         On Debian systems, the full text of the Apache License, Version 2.0 can be\n \
         found in /usr/share/common-licenses/Apache-2.0.\n\
         \n\
         License: GPL-2\n \
         On Debian systems, the full text of the GNU General Public License version 2\n \
         can be found in /usr/share/common-licenses/GPL-2.\n"
    )
}

/// Lintian overrides for what a self-contained static bundle necessarily does
/// differently from a distribution package. Each carries its reason.
pub fn default_lintian_overrides(package: &str) -> String {
    format!(
        "# Upstream Kata's static release installs one relocatable tree under /opt/kata\n\
         # (its configuration and the shim's lookup paths are built around that prefix).\n\
         # This package is a binary repackaging of that release, not a distribution package.\n\
         {package}: dir-or-file-in-opt [opt/kata/*]\n\
         {package}: dir-or-file-in-opt [opt/kata/]\n\
         # The runtime, shim and helpers are static-pie (musl) executables so one build runs on\n\
         # every host distribution: ELF type DYN without DT_NEEDED, which lintian mistakes for a\n\
         # shared library missing its libc dependency.\n\
         {package}: shared-library-lacks-prerequisites [opt/kata/*]\n\
         # vhost-device-vsock reads its YAML config through serde_yaml, whose parser is\n\
         # unsafe-libyaml, a Rust translation of libyaml compiled into the binary: a static\n\
         # binary cannot link the system's libyaml.\n\
         {package}: embedded-library libyaml [opt/kata/libexec/vhost-device-vsock]\n\
         # Guest kernels are payloads for the virtual machine, not host binaries: their symbols\n\
         # are kept for guest crash analysis and the host never loads them.\n\
         {package}: unstripped-binary-or-object [opt/kata/share/kata-containers/*]\n\
         # The commands on PATH are links into /opt/kata; upstream ships no manual pages\n\
         # (`kata-runtime --help` and `kata-monitor --help` document them, and containerd\n\
         # runs the shim).\n\
         {package}: no-manual-page [usr/bin/containerd-shim-kata-v2]\n\
         {package}: no-manual-page [usr/bin/kata-runtime]\n\
         {package}: no-manual-page [usr/bin/kata-monitor]\n\
         # Built for this project's releases, not uploaded to Debian: there is no ITP bug to close.\n\
         {package}: initial-upload-closes-no-bugs [usr/share/doc/{package}/changelog.Debian.gz:1]\n\
"
    )
}

/// Writes the .deb for `layout` to `out` (temp file, read back, host-safety
/// checked, renamed into place).
pub fn write_deb(layout: &Layout, meta: &DebMeta, out: &Path, epoch: u64) -> Result<()> {
    meta.check()?;
    check_host_safety_layout(layout)?;
    let bytes = build_deb(layout, meta, epoch)?;
    write_atomically(
        out,
        |w| Ok(w.write_all(&bytes)?),
        |tmp| check_host_safety_deb(tmp, layout.prefix()),
    )
    .with_context(|| format!("cannot write Debian package {}", out.display()))
}

/// Builds the whole package in memory (control and data members must be
/// sized before the ar headers are written).
fn build_deb(layout: &Layout, meta: &DebMeta, epoch: u64) -> Result<Vec<u8>> {
    let doc_dir = format!("usr/share/doc/{}", meta.package);
    let mut docs: BTreeMap<String, EntryKind> = BTreeMap::new();
    for dir in ["usr", "usr/share", "usr/share/doc", doc_dir.as_str()] {
        docs.insert(dir.to_string(), EntryKind::Dir { mode: DIR_MODE });
    }
    docs.insert(
        format!("{doc_dir}/copyright"),
        EntryKind::Contents {
            bytes: meta.copyright.clone().into_bytes(),
            mode: 0o644,
        },
    );
    docs.insert(
        format!("{doc_dir}/changelog.Debian.gz"),
        EntryKind::Contents {
            bytes: gzip_no_timestamp(meta.changelog(epoch).as_bytes())?,
            mode: 0o644,
        },
    );
    if !meta.lintian_overrides.is_empty() {
        for dir in ["usr/share/lintian", "usr/share/lintian/overrides"] {
            docs.insert(dir.to_string(), EntryKind::Dir { mode: DIR_MODE });
        }
        docs.insert(
            format!("usr/share/lintian/overrides/{}", meta.package),
            EntryKind::Contents {
                bytes: meta.lintian_overrides.clone().into_bytes(),
                mode: 0o644,
            },
        );
    }
    // The binaries on PATH, as distribution packages put them.
    docs.insert("usr/bin".into(), EntryKind::Dir { mode: DIR_MODE });
    for (link, target) in layout.path_links()? {
        docs.insert(link, EntryKind::Symlink { target });
    }
    let mut tree: Vec<(String, &EntryKind)> = layout
        .archive_entries()
        .into_iter()
        .map(|e| (e.path, e.kind))
        .collect();
    for (p, k) in &docs {
        if tree.iter().any(|(q, _)| q == p) {
            bail!("{p}: the release layout collides with the package's documentation files");
        }
        tree.push((p.clone(), k));
    }
    tree.sort_by(|a, b| a.0.cmp(&b.0));

    // md5sums: every regular file, path relative to / without a leading slash.
    let mut md5sums = String::new();
    let mut installed_kib = layout.installed_size_kib()?;
    for (path, kind) in &tree {
        let digest = match kind {
            EntryKind::File { source, .. } => {
                let mut f = std::fs::File::open(source)
                    .with_context(|| format!("cannot read {}", source.display()))?;
                let mut h = Md5::new();
                std::io::copy(&mut f, &mut h)?;
                hex::encode(h.finalize())
            }
            EntryKind::Contents { bytes, .. } => hex::encode(Md5::digest(bytes)),
            _ => continue,
        };
        md5sums.push_str(&format!("{digest}  {path}\n"));
    }
    for kind in docs.values() {
        installed_kib += match kind {
            EntryKind::Contents { bytes, .. } => (bytes.len() as u64).div_ceil(1024),
            _ => 1,
        };
    }

    let control = meta.control(installed_kib);
    let control_members: Vec<(String, EntryKind)> = vec![
        (
            "control".into(),
            EntryKind::Contents {
                bytes: control.into_bytes(),
                mode: 0o644,
            },
        ),
        (
            "md5sums".into(),
            EntryKind::Contents {
                bytes: md5sums.into_bytes(),
                mode: 0o644,
            },
        ),
    ];
    let control_tar = xz_tar(|tar| {
        tar.append(".", DIR_MODE, epoch, TarKind::Dir)?;
        write_tree_tar(
            tar,
            &control_members
                .iter()
                .map(|(p, k)| (p.clone(), k))
                .collect::<Vec<_>>(),
            epoch,
        )
    })?;
    let data_tar = xz_tar(|tar| {
        tar.append(".", DIR_MODE, epoch, TarKind::Dir)?;
        write_tree_tar(tar, &tree, epoch)
    })?;

    let mut deb = Vec::with_capacity(control_tar.len() + data_tar.len() + 256);
    deb.extend_from_slice(crate::ar::MAGIC);
    crate::ar::write_member(&mut deb, "debian-binary", epoch, b"2.0\n")?;
    crate::ar::write_member(&mut deb, "control.tar.xz", epoch, &control_tar)?;
    crate::ar::write_member(&mut deb, "data.tar.xz", epoch, &data_tar)?;
    Ok(deb)
}

fn xz_tar(
    fill: impl FnOnce(&mut TarWriter<liblzma::write::XzEncoder<Vec<u8>>>) -> Result<()>,
) -> Result<Vec<u8>> {
    let encoder = crate::compress::xz_encoder(Vec::new(), crate::compress::workers())?;
    let mut tar = TarWriter::new(encoder);
    fill(&mut tar)?;
    Ok(tar.finish()?.finish()?)
}

/// gzip at level 9 with no file name and mtime 0 (what `gzip -9n` promises).
fn gzip_no_timestamp(data: &[u8]) -> Result<Vec<u8>> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(data)?;
    Ok(gz.finish()?)
}

/// Members of the `data.tar.xz` of a .deb, read back from disk.
pub(crate) fn read_data_members(path: &Path) -> Result<Vec<(String, MemberKind)>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let members = crate::ar::read_members(&bytes).with_context(|| format!("{}", path.display()))?;
    match members.first() {
        Some((name, data)) if name == "debian-binary" && data.starts_with(b"2.") => {}
        _ => bail!("{}: first member is not debian-binary 2.x", path.display()),
    }
    let (name, data) = members
        .iter()
        .find(|(n, _)| n.starts_with("data.tar"))
        .ok_or_else(|| anyhow::anyhow!("{}: no data.tar member", path.display()))?;
    let reader: Box<dyn Read> = match name.as_str() {
        "data.tar.xz" => Box::new(liblzma::read::XzDecoder::new(*data)),
        "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(*data)),
        "data.tar.zst" => Box::new(zstd::stream::Decoder::new(*data)?),
        "data.tar" => Box::new(*data),
        other => bail!("{}: unsupported data member {other}", path.display()),
    };
    tar_members(reader).with_context(|| format!("{}: {name}", path.display()))
}
