//! A sorted, lstat-based listing of a directory tree, shared by the tar,
//! cpio and ext4 writers so that all see the same entries in the same order.
//! A tree built without root is listed as the guest sees it: its rootless
//! record (see [`crate::rootless`]) gives the owners and the modes it keeps,
//! and turns placeholder files into device nodes.

use crate::recipe::DeviceKind;
use crate::rootless::RootlessRecord;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Directory,
    Regular,
    Symlink(Vec<u8>),
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
}

#[derive(Debug, Clone)]
pub(crate) struct TreeEntry {
    /// Path relative to the tree root, without leading `/`; empty for the root.
    pub rel: Vec<u8>,
    /// Path on the host.
    pub host_path: PathBuf,
    pub kind: EntryKind,
    /// Permission bits including setuid/setgid/sticky.
    pub perm: u32,
    pub size: u64,
    pub mtime: i64,
    /// Owner in the guest: on disk, or from the rootless record.
    pub uid: u32,
    pub gid: u32,
    /// Index of the first entry (in sorted order) of this entry's hard-link
    /// group, and the group's size; None for entries that are not hard-linked.
    pub link_group: Option<(usize, u32)>,
    /// For directories: 2 + number of subdirectories, as a filesystem counts.
    pub dir_nlink: u32,
}

impl TreeEntry {
    pub fn mode_type_bits(&self) -> u32 {
        match self.kind {
            EntryKind::Directory => libc::S_IFDIR,
            EntryKind::Regular => libc::S_IFREG,
            EntryKind::Symlink(_) => libc::S_IFLNK,
            EntryKind::CharDevice { .. } => libc::S_IFCHR,
            EntryKind::BlockDevice { .. } => libc::S_IFBLK,
            EntryKind::Fifo => libc::S_IFIFO,
        }
    }
}

/// Lists `root` and everything below it (no symlink is followed), sorted by
/// relative path bytes, root first. Sockets are rejected: no archive format
/// we write can carry them.
pub(crate) fn list_tree(root: &Path) -> Result<Vec<TreeEntry>> {
    let meta = std::fs::symlink_metadata(root)
        .with_context(|| format!("{}: cannot stat", root.display()))?;
    if !meta.is_dir() {
        bail!("{}: not a directory", root.display());
    }
    let record = RootlessRecord::load(root)?;
    let mut raw = Vec::new();
    collect(root, Vec::new(), &mut raw)?;
    raw.sort_by(|a, b| a.0.cmp(&b.0));

    let mut entries = Vec::with_capacity(raw.len());
    let mut groups: BTreeMap<(u64, u64), Vec<usize>> = BTreeMap::new();
    for (i, (rel, host_path, meta)) in raw.into_iter().enumerate() {
        let ft = meta.file_type();
        let rdev = meta.rdev();
        let kind = if ft.is_dir() {
            EntryKind::Directory
        } else if ft.is_file() {
            EntryKind::Regular
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&host_path)
                .with_context(|| format!("{}: cannot read symlink", host_path.display()))?;
            EntryKind::Symlink(target.as_os_str().as_bytes().to_vec())
        } else if ft.is_char_device() {
            EntryKind::CharDevice {
                major: libc::major(rdev),
                minor: libc::minor(rdev),
            }
        } else if ft.is_block_device() {
            EntryKind::BlockDevice {
                major: libc::major(rdev),
                minor: libc::minor(rdev),
            }
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else {
            bail!(
                "{}: sockets cannot be archived; remove it from the tree",
                host_path.display()
            );
        };
        let mut perm = meta.mode() & 0o7777;
        let (kind, uid, gid) = match &record {
            None => (kind, meta.uid(), meta.gid()),
            Some(r) => {
                let text = std::str::from_utf8(&rel).ok();
                let owner = text.map_or(r.owner, |rel| r.owner_of(rel));
                if let Some(mode) = text.and_then(|rel| r.modes.get(rel)) {
                    perm = *mode;
                }
                (
                    recorded_kind(r, &rel, kind, &meta, &host_path)?,
                    owner.0,
                    owner.1,
                )
            }
        };
        if kind != EntryKind::Directory && meta.nlink() > 1 {
            groups.entry((meta.dev(), meta.ino())).or_default().push(i);
        }
        entries.push(TreeEntry {
            rel,
            host_path,
            perm,
            size: if kind == EntryKind::Regular {
                meta.len()
            } else {
                0
            },
            mtime: meta.mtime(),
            uid,
            gid,
            kind,
            link_group: None,
            dir_nlink: 2,
        });
    }
    for members in groups.values() {
        if members.len() > 1 {
            let count = u32::try_from(members.len()).expect("link count fits u32");
            for &m in members {
                entries[m].link_group = Some((members[0], count));
            }
        }
    }
    if let Some(r) = &record {
        let listed: std::collections::BTreeSet<&[u8]> =
            entries.iter().map(|e| e.rel.as_slice()).collect();
        for (what, path) in r
            .devices
            .keys()
            .map(|p| ("device", p))
            .chain(r.owners.keys().map(|p| ("the owner of", p)))
            .chain(r.modes.keys().map(|p| ("the mode of", p)))
        {
            if !listed.contains(path.as_bytes()) {
                bail!(
                    "{}: the rootless record lists {what} {path}, which is not in the tree",
                    root.display()
                );
            }
        }
    }
    // Count subdirectories: the parent of `a/b` is the entry whose rel is `a`.
    let index: BTreeMap<Vec<u8>, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.rel.clone(), i))
        .collect();
    for i in 0..entries.len() {
        if entries[i].kind == EntryKind::Directory && !entries[i].rel.is_empty() {
            let rel = &entries[i].rel;
            let parent = match rel.iter().rposition(|&b| b == b'/') {
                Some(p) => rel[..p].to_vec(),
                None => Vec::new(),
            };
            let p = index[&parent];
            entries[p].dir_nlink += 1;
        }
    }
    Ok(entries)
}

/// An entry's kind in a rootless tree: a recorded device must be an empty,
/// unlinked regular file on disk (its placeholder); anything else must not
/// be a device node (a rootless build cannot have made one).
fn recorded_kind(
    record: &RootlessRecord,
    rel: &[u8],
    on_disk: EntryKind,
    meta: &std::fs::Metadata,
    host_path: &Path,
) -> Result<EntryKind> {
    let device = std::str::from_utf8(rel)
        .ok()
        .and_then(|rel| record.devices.get(rel));
    match (device, &on_disk) {
        (Some(d), EntryKind::Regular) if meta.len() == 0 && meta.nlink() == 1 => {
            let (major, minor) = (d.major, d.minor);
            Ok(match d.kind {
                DeviceKind::Char => EntryKind::CharDevice { major, minor },
                DeviceKind::Block => EntryKind::BlockDevice { major, minor },
            })
        }
        (Some(_), _) => bail!(
            "{}: the rootless record makes it a device, but it is not an empty placeholder file",
            host_path.display()
        ),
        (None, EntryKind::CharDevice { .. } | EntryKind::BlockDevice { .. }) => bail!(
            "{}: a device node in a tree with a rootless record, which does not list it",
            host_path.display()
        ),
        (None, _) => Ok(on_disk),
    }
}

/// Every path below and including `dir`, with its relative path bytes (empty
/// for `dir`) and its own (not a symlink target's) metadata.
fn collect(
    dir: &Path,
    rel: Vec<u8>,
    out: &mut Vec<(Vec<u8>, PathBuf, std::fs::Metadata)>,
) -> Result<()> {
    for e in walkdir::WalkDir::new(dir).follow_root_links(false) {
        let e = e.with_context(|| format!("{}: cannot list directory", dir.display()))?;
        let mut child_rel = rel.clone();
        let below = e.path().strip_prefix(dir).expect("below the root");
        if !below.as_os_str().is_empty() {
            if !child_rel.is_empty() {
                child_rel.push(b'/');
            }
            child_rel.extend_from_slice(below.as_os_str().as_bytes());
        }
        let meta = e
            .metadata()
            .with_context(|| format!("{}: cannot stat", e.path().display()))?;
        out.push((child_rel, e.into_path(), meta));
    }
    Ok(())
}
