//! Host-safety checks: a release is unpacked into `/` on real hosts (`tar -C /`,
//! `dpkg -i`, `rpm -i`), so no archive may carry files that replace host
//! identity or pseudo filesystems (`etc/resolv.conf`, `etc/hosts`, `dev/`,
//! `proc/`, `sys/`), device nodes, or links that lead outside the prefix.
//!
//! The checks run on what was actually written: each archive is read back
//! (tar members, the .deb's `data.tar`, the RPM's file list) after writing.

use std::fmt;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::layout::{EntryKind, Layout};

/// One reason an archive is unsafe to unpack on a host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SafetyViolation {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for SafetyViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// An archive member as read back.
#[derive(Clone, Debug)]
pub(crate) enum MemberKind {
    Dir,
    File,
    Symlink(String),
    Hardlink(String),
    Other(String),
}

/// Files that would replace the host's own name resolution.
const HOST_IDENTITY_FILES: [&str; 2] = ["etc/resolv.conf", "etc/hosts"];
/// Pseudo filesystems a package must never write into.
const PSEUDO_FS_DIRS: [&str; 3] = ["dev", "proc", "sys"];

/// Checks members (paths as stored, `./x`, `/x` or `x`) against the rules;
/// `prefix` is the absolute install prefix that links may point into.
pub(crate) fn check_members(
    members: &[(String, MemberKind)],
    prefix: &str,
) -> Vec<SafetyViolation> {
    let prefix_components: Vec<&str> = prefix.split('/').filter(|c| !c.is_empty()).collect();
    let mut violations = Vec::new();
    let mut flag = |path: &str, reason: String| {
        violations.push(SafetyViolation {
            path: path.to_string(),
            reason,
        })
    };
    for (raw, kind) in members {
        let Some(components) = normalize(raw) else {
            flag(raw, "path leaves the archive root through '..'".into());
            continue;
        };
        let joined = components.join("/");
        if HOST_IDENTITY_FILES
            .iter()
            .any(|f| joined == *f || joined.ends_with(&format!("/{f}")))
        {
            flag(
                raw,
                "would overwrite a host identity file (etc/resolv.conf, etc/hosts)".into(),
            );
        }
        if components
            .first()
            .is_some_and(|c| PSEUDO_FS_DIRS.contains(c))
        {
            flag(
                raw,
                format!("writes into /{}, a host pseudo filesystem", components[0]),
            );
        }
        match kind {
            MemberKind::Dir | MemberKind::File => {}
            MemberKind::Other(what) => flag(
                raw,
                format!("{what} entries must not be installed on a host"),
            ),
            MemberKind::Symlink(target) | MemberKind::Hardlink(target) => {
                let is_symlink = matches!(kind, MemberKind::Symlink(_));
                let resolved = if target.starts_with('/') || !is_symlink {
                    // Hard link names are archive paths; absolute symlinks are host paths.
                    normalize(target)
                } else {
                    let mut base: Vec<&str> =
                        components[..components.len().saturating_sub(1)].to_vec();
                    resolve_relative(&mut base, target).then_some(base)
                };
                let what = if is_symlink { "symlink" } else { "hard link" };
                match resolved {
                    None => flag(raw, format!("{what} to {target:?} leaves the filesystem root")),
                    Some(r) if !r.starts_with(&prefix_components) => flag(
                        raw,
                        format!("{what} to {target:?} points outside the prefix {prefix} (to /{})", r.join("/")),
                    ),
                    // Inside the prefix, links stay relative so the tree can
                    // be relocated; a distribution package's links from
                    // outside it (usr/bin) are absolute, as policy wants.
                    Some(_)
                        if is_symlink
                            && target.starts_with('/')
                            && components.starts_with(&prefix_components) =>
                    {
                        flag(
                            raw,
                            format!("absolute symlink to {target:?}: use a relative target so the tree can be relocated"),
                        )
                    }
                    Some(_) => {}
                }
            }
        }
    }
    violations
}

/// Splits a stored path into components, dropping `.`, a leading `/` and
/// empty parts; `None` if `..` climbs above the root.
fn normalize(path: &str) -> Option<Vec<&str>> {
    let mut out = Vec::new();
    resolve_relative(&mut out, path).then_some(out)
}

fn resolve_relative<'a>(base: &mut Vec<&'a str>, target: &'a str) -> bool {
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if base.pop().is_none() {
                    return false;
                }
            }
            c => base.push(c),
        }
    }
    true
}

fn fail_on(violations: Vec<SafetyViolation>, what: &str) -> Result<()> {
    if violations.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = violations.iter().map(|v| v.to_string()).collect();
    bail!(
        "{what} is not safe to install on a host: {}",
        list.join("; ")
    )
}

/// Refuses a layout before anything is written.
pub fn check_host_safety_layout(layout: &Layout) -> Result<()> {
    let members: Vec<(String, MemberKind)> = layout
        .archive_entries()
        .into_iter()
        .map(|e| {
            let kind = match e.kind {
                EntryKind::Dir { .. } => MemberKind::Dir,
                EntryKind::File { .. } | EntryKind::Contents { .. } => MemberKind::File,
                EntryKind::Symlink { target } => MemberKind::Symlink(target.clone()),
            };
            (e.path, kind)
        })
        .collect();
    fail_on(
        check_members(&members, layout.prefix()),
        "the release layout",
    )
}

/// Reads the members of a (decompressed) tar stream.
pub(crate) fn tar_members(reader: impl Read) -> Result<Vec<(String, MemberKind)>> {
    let mut archive = tar::Archive::new(reader);
    let mut members = Vec::new();
    for entry in archive.entries().context("cannot read tar entries")? {
        let entry = entry.context("corrupt tar entry")?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let link = || {
            entry
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned())
                .unwrap_or_default()
        };
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => MemberKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => MemberKind::File,
            tar::EntryType::Symlink => MemberKind::Symlink(link()),
            tar::EntryType::Link => MemberKind::Hardlink(link()),
            tar::EntryType::Char => MemberKind::Other("character device".into()),
            tar::EntryType::Block => MemberKind::Other("block device".into()),
            tar::EntryType::Fifo => MemberKind::Other("fifo".into()),
            other => MemberKind::Other(format!("tar type {:?}", other)),
        };
        members.push((path, kind));
    }
    Ok(members)
}

/// Reads back a `.tar.zst` and refuses it if unsafe.
pub fn check_host_safety_tarball(path: &Path, prefix: &str) -> Result<()> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let decoder = zstd::stream::Decoder::new(file)
        .with_context(|| format!("{}: not zstd", path.display()))?;
    let members = tar_members(decoder).with_context(|| format!("{}", path.display()))?;
    fail_on(check_members(&members, prefix), &path.display().to_string())
}

/// Reads back a `.deb` (its `data.tar.*`) and refuses it if unsafe.
pub fn check_host_safety_deb(path: &Path, prefix: &str) -> Result<()> {
    let members = crate::deb::read_data_members(path)?;
    fail_on(check_members(&members, prefix), &path.display().to_string())
}

/// Reads back an `.rpm` (its header file list, which is what rpm installs) and
/// refuses it if unsafe.
pub fn check_host_safety_rpm(path: &Path, prefix: &str) -> Result<()> {
    let pkg =
        rpm::Package::open(path).with_context(|| format!("cannot read RPM {}", path.display()))?;
    let files = pkg
        .metadata
        .get_file_entries()
        .with_context(|| format!("{}: bad file list", path.display()))?;
    let members: Vec<(String, MemberKind)> = files
        .iter()
        .map(|f| {
            let kind = match f.file_type() {
                rpm::FileType::Dir => MemberKind::Dir,
                rpm::FileType::Regular => MemberKind::File,
                rpm::FileType::SymbolicLink => {
                    MemberKind::Symlink(f.linkto().unwrap_or_default().to_string())
                }
                other => MemberKind::Other(format!("{other:?}")),
            };
            (f.path().to_string_lossy().into_owned(), kind)
        })
        .collect();
    fail_on(check_members(&members, prefix), &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: &str, kind: MemberKind) -> Vec<SafetyViolation> {
        check_members(&[(path.to_string(), kind)], "/opt/kata")
    }

    #[test]
    fn relative_links_inside_the_prefix_pass() {
        assert!(check(
            "./opt/kata/share/kata-containers/vmlinux.container",
            MemberKind::Symlink("vmlinux-6.1-1".into())
        )
        .is_empty());
        assert!(check(
            "./opt/kata/bin/x",
            MemberKind::Symlink("../libexec/y".into())
        )
        .is_empty());
        assert!(check("./opt/kata/bin/", MemberKind::Dir).is_empty());
        // A distribution package's PATH link from outside the prefix is
        // absolute (Debian policy) and must still land inside it.
        assert!(check(
            "./usr/bin/kata-runtime",
            MemberKind::Symlink("/opt/kata/bin/kata-runtime".into())
        )
        .is_empty());
        assert_eq!(
            check(
                "./usr/bin/kata-runtime",
                MemberKind::Symlink("/usr/lib/x".into())
            )
            .len(),
            1
        );
        assert_eq!(
            check(
                "./opt/kata/bin/x",
                MemberKind::Symlink("/opt/kata/libexec/y".into())
            )
            .len(),
            1,
            "inside the prefix links stay relative"
        );
    }

    #[test]
    fn host_files_and_escaping_links_fail() {
        assert_eq!(check("./etc/resolv.conf", MemberKind::File).len(), 1);
        assert_eq!(check("etc/hosts", MemberKind::File).len(), 1);
        assert_eq!(check("./opt/kata/etc/hosts", MemberKind::File).len(), 1);
        assert_eq!(check("./dev/", MemberKind::Dir).len(), 1);
        assert_eq!(check("/proc/self", MemberKind::File).len(), 1);
        assert_eq!(check("./sys/x", MemberKind::File).len(), 1);
        assert_eq!(
            check(
                "./opt/kata/null",
                MemberKind::Other("character device".into())
            )
            .len(),
            1
        );
        assert_eq!(
            check("./opt/kata/x", MemberKind::Symlink("/etc".into())).len(),
            1
        );
        assert_eq!(
            check("./opt/kata/x", MemberKind::Symlink("../../../etc".into())).len(),
            1
        );
        assert_eq!(
            check(
                "./opt/kata/x",
                MemberKind::Symlink("../../../../../etc".into())
            )
            .len(),
            1
        );
        assert_eq!(
            check("./opt/kata/x", MemberKind::Hardlink("etc/shadow".into())).len(),
            1
        );
        assert_eq!(check("./opt/../../x", MemberKind::File).len(), 1);
        // Absolute links inside the prefix are still refused: they break relocation.
        assert_eq!(
            check(
                "./opt/kata/x",
                MemberKind::Symlink("/opt/kata/bin/y".into())
            )
            .len(),
            1
        );
    }
}
