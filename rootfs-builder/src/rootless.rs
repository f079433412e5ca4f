//! Trees built without root.
//!
//! An unprivileged user can neither chown a file to 0:0 nor create a device
//! node. A rootless build therefore leaves every entry owned by the user who
//! built it, puts an empty regular file (with the device's permission bits)
//! where a device node belongs, and writes the *rootless record* beside the
//! tree: `<tree>.rootless`, e.g. `rootfs.rootless` next to `rootfs/`. It
//! says who owns the entries in the guest and which placeholders are
//! devices. The tree listing shared by every writer (tar digest, cpio,
//! ext4) applies it, so a rootless tree gives the same digest, initrd and
//! image as the same tree built as root; nothing is mknod'ed or chowned on
//! the host. (Buildroot's device tables and `fakeroot -s` keep the same
//! facts outside the tree for the same reason.)
//!
//! A file the owner cannot read (mode 0000, as Debian's /etc/shadow) or a
//! directory it cannot list would stop the writers: on disk such an entry
//! gets owner read (and search) permission, and the record keeps its mode.
//!
//! The record is text, one fact per line, sorted: the owner of every entry
//! not listed, the entries with another owner, the modes kept, the devices.
//!
//! ```text
//! format 1
//! owner 0 0
//! owner 0 42 usr/sbin/unix_chkpwd
//! mode 0000 etc/shadow
//! char 5 1 dev/console
//! ```

use crate::recipe::DeviceKind;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Version of the record's layout.
pub const RECORD_FORMAT: u32 = 1;

/// How a tree is built: as root (chown, mknod), or without root (a record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privileges {
    Root,
    Rootless,
}

impl Privileges {
    /// `Root` when the process's effective uid is 0 in the initial user
    /// namespace. Uid 0 in another one (`unshare -r`, rootless
    /// containers) cannot mknod, so it builds rootless too.
    pub fn of_process() -> Self {
        let uid_map = std::fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
        if nix::unistd::geteuid().is_root() && is_initial_uid_map(&uid_map) {
            Privileges::Root
        } else {
            Privileges::Rootless
        }
    }

    /// For cache keys and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Privileges::Root => "root",
            Privileges::Rootless => "rootless",
        }
    }
}

/// The initial user namespace maps every id to itself:
/// `0 0 4294967295`.
fn is_initial_uid_map(uid_map: &str) -> bool {
    let fields: Vec<&str> = uid_map.split_whitespace().collect();
    fields == ["0", "0", "4294967295"]
}

/// A device node that a rootless tree holds as an empty placeholder file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordedDevice {
    pub kind: DeviceKind,
    pub major: u32,
    pub minor: u32,
}

/// What a rootless tree cannot hold on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootlessRecord {
    /// Owner (uid, gid) in the guest of every entry `owners` does not list.
    pub owner: (u32, u32),
    /// Entries with another owner, by path relative to the tree root.
    pub owners: BTreeMap<String, (u32, u32)>,
    /// Permission bits of entries that have more on disk (owner read).
    pub modes: BTreeMap<String, u32>,
    /// Placeholders that are device nodes, by path relative to the tree
    /// root (no leading `/`).
    pub devices: BTreeMap<String, RecordedDevice>,
}

/// Where the record of `tree` lives: beside it, `<name>.rootless`. `None`
/// for a path without a final name (`/`, `..`).
pub fn record_path(tree: &Path) -> Option<PathBuf> {
    let name = tree.file_name()?;
    let mut file = name.to_os_string();
    file.push(".rootless");
    Some(tree.with_file_name(file))
}

impl RootlessRecord {
    /// The record of an `init: agent` tree: everything is root's.
    pub fn owned_by_root() -> Self {
        RootlessRecord {
            owner: (0, 0),
            owners: BTreeMap::new(),
            modes: BTreeMap::new(),
            devices: BTreeMap::new(),
        }
    }

    /// The guest owner of `rel`.
    pub fn owner_of(&self, rel: &str) -> (u32, u32) {
        self.owners.get(rel).copied().unwrap_or(self.owner)
    }

    pub fn encode(&self) -> String {
        let mut text = format!(
            "# rootfs-builder: the tree beside this file was built without root.\n\
             # In the guest every entry is owned by the first owner below unless\n\
             # listed with another (uid, gid, path); modes listed are the guest's\n\
             # (on disk the owner may also read); and the empty files listed\n\
             # below are device nodes (kind, major, minor, path).\n\
             format {RECORD_FORMAT}\nowner {} {}\n",
            self.owner.0, self.owner.1
        );
        for (path, (uid, gid)) in &self.owners {
            text.push_str(&format!("owner {uid} {gid} {path}\n"));
        }
        for (path, mode) in &self.modes {
            text.push_str(&format!("mode {mode:04o} {path}\n"));
        }
        for (path, d) in &self.devices {
            let kind = match d.kind {
                DeviceKind::Char => "char",
                DeviceKind::Block => "block",
            };
            text.push_str(&format!("{kind} {} {} {path}\n", d.major, d.minor));
        }
        text
    }

    /// Parses a record; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self> {
        let at = |n: usize| format!("{}:{}", file.display(), n + 1);
        let mut format = None;
        let mut owner = None;
        let mut owners = BTreeMap::new();
        let mut modes = BTreeMap::new();
        let mut devices = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.splitn(4, ' ');
            let number = |w: Option<&str>, what: &str| -> Result<u32> {
                w.and_then(|w| w.parse().ok())
                    .with_context(|| format!("{}: {what} is not a number", at(n)))
            };
            let relative = |w: Option<&str>, what: &str| -> Result<String> {
                w.filter(|p| {
                    !p.is_empty()
                        && !p.starts_with('/')
                        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
                })
                .map(str::to_string)
                .with_context(|| format!("{}: {what} needs a relative path in the tree", at(n)))
            };
            match words.next() {
                Some("format") => {
                    let v = number(words.next(), "the format")?;
                    if v != RECORD_FORMAT {
                        bail!("{}: format {v}, this builder reads format {RECORD_FORMAT}; rebuild the tree", at(n));
                    }
                    format = Some(v);
                }
                Some("owner") => {
                    let uid = number(words.next(), "the uid")?;
                    let gid = number(words.next(), "the gid")?;
                    match words.next() {
                        None if owner.replace((uid, gid)).is_some() => {
                            bail!(
                                "{}: one `owner UID GID` line without a path is expected",
                                at(n)
                            )
                        }
                        None => {}
                        path => {
                            let path = relative(path, "an owner")?;
                            if owners.insert(path.clone(), (uid, gid)).is_some() {
                                bail!("{}: the owner of {path} is given twice", at(n));
                            }
                        }
                    }
                }
                Some("mode") => {
                    let mode = words
                        .next()
                        .and_then(|w| u32::from_str_radix(w, 8).ok())
                        .filter(|m| *m <= 0o7777)
                        .with_context(|| {
                            format!("{}: the mode is not octal permission bits", at(n))
                        })?;
                    let path = relative(words.next(), "a mode")?;
                    if modes.insert(path.clone(), mode).is_some() {
                        bail!("{}: the mode of {path} is given twice", at(n));
                    }
                }
                Some(kind @ ("char" | "block")) => {
                    let major = number(words.next(), "the major number")?;
                    let minor = number(words.next(), "the minor number")?;
                    let path = relative(words.next(), "a device")?;
                    let kind = if kind == "char" {
                        DeviceKind::Char
                    } else {
                        DeviceKind::Block
                    };
                    let device = RecordedDevice { kind, major, minor };
                    if devices.insert(path.clone(), device).is_some() {
                        bail!("{}: device {path} is listed twice", at(n));
                    }
                }
                _ => bail!(
                    "{}: unknown line `{line}` (expected format, owner, char or block)",
                    at(n)
                ),
            }
        }
        if format.is_none() {
            bail!(
                "{}: no `format` line; not a rootless record",
                file.display()
            );
        }
        let owner =
            owner.with_context(|| format!("{}: no `owner UID GID` line", file.display()))?;
        Ok(RootlessRecord {
            owner,
            owners,
            modes,
            devices,
        })
    }

    /// The record beside `tree`, if the tree was built without root.
    pub fn load(tree: &Path) -> Result<Option<Self>> {
        let Some(file) = record_path(tree) else {
            return Ok(None);
        };
        match std::fs::read_to_string(&file) {
            Ok(text) => Ok(Some(Self::parse(&text, &file)?)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                Err(anyhow::Error::new(e).context(format!("{}: cannot read", file.display())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RootlessRecord {
        let mut r = RootlessRecord::owned_by_root();
        r.owners.insert("var/mail".into(), (0, 8));
        r.owners
            .insert("var/cache/apt/archives/partial".into(), (42, 0));
        r.modes.insert("etc/shadow".into(), 0);
        r.devices.insert(
            "dev/console".into(),
            RecordedDevice {
                kind: DeviceKind::Char,
                major: 5,
                minor: 1,
            },
        );
        r.devices.insert(
            "dev/vda 1".into(),
            RecordedDevice {
                kind: DeviceKind::Block,
                major: 254,
                minor: 0,
            },
        );
        r
    }

    #[test]
    fn record_round_trips_and_sits_beside_the_tree() {
        let r = sample();
        let text = r.encode();
        assert!(
            text.contains("\nowner 0 0\nowner 42 0 var/cache/apt/archives/partial\nowner 0 8 var/mail\nmode 0000 etc/shadow\nchar 5 1 dev/console\nblock 254 0 dev/vda 1\n"),
            "{text}"
        );
        assert_eq!(r.owner_of("var/mail"), (0, 8));
        assert_eq!(r.owner_of("var"), (0, 0));
        assert_eq!(RootlessRecord::parse(&text, Path::new("r")).unwrap(), r);
        assert_eq!(
            record_path(Path::new("/c/entry/rootfs")).unwrap(),
            Path::new("/c/entry/rootfs.rootless")
        );
        assert_eq!(record_path(Path::new("/")), None);
    }

    /// A tree as a rootless build leaves it: a placeholder and its record.
    fn rootless_tree(dir: &Path, record: &RootlessRecord) -> PathBuf {
        let tree = dir.join("rootfs");
        std::fs::create_dir_all(tree.join("dev")).unwrap();
        std::fs::write(tree.join("dev/console"), b"").unwrap();
        std::fs::write(tree.join("init"), b"#!/bin/sh\n").unwrap();
        std::fs::write(record_path(&tree).unwrap(), record.encode()).unwrap();
        tree
    }

    fn listing(tree: &Path) -> Result<String> {
        let mut stream = Vec::new();
        crate::tar::write_tree_tar(tree, &mut stream)?;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("t.tar");
        std::fs::write(&file, stream).unwrap();
        Ok(crate::tar::gnu_tar_listing(&file))
    }

    #[test]
    fn the_listing_applies_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = RootlessRecord::owned_by_root();
        record.devices.insert(
            "dev/console".into(),
            RecordedDevice {
                kind: DeviceKind::Char,
                major: 5,
                minor: 1,
            },
        );
        record.modes.insert("init".into(), 0o000);
        record.owners.insert("init".into(), (0, 42));
        let tree = rootless_tree(dir.path(), &record);
        std::fs::set_permissions(
            tree.join("dev/console"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        std::fs::set_permissions(
            tree.join("init"),
            std::os::unix::fs::PermissionsExt::from_mode(0o400),
        )
        .unwrap();
        let text = listing(&tree).unwrap();
        let console = text.lines().find(|l| l.ends_with("./dev/console")).unwrap();
        assert!(console.starts_with("crw------- 0/0"), "{console}");
        assert!(console.contains(" 5,1 "), "{console}");
        // The recorded mode, not the disk's (the tar digest writes owners 0:0).
        let init = text.lines().find(|l| l.ends_with("./init")).unwrap();
        assert!(init.starts_with("---------- 0/0"), "{init}");

        // The record is what makes it a device: without it, a plain file.
        std::fs::remove_file(record_path(&tree).unwrap()).unwrap();
        let text = listing(&tree).unwrap();
        let console = text.lines().find(|l| l.ends_with("./dev/console")).unwrap();
        assert!(console.starts_with("-rw-------"), "{console}");
    }

    #[test]
    fn a_record_that_does_not_fit_its_tree_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = RootlessRecord::owned_by_root();
        let null = RecordedDevice {
            kind: DeviceKind::Char,
            major: 1,
            minor: 3,
        };
        record.devices.insert("dev/null".into(), null);
        let tree = rootless_tree(dir.path(), &record);
        let err = format!("{:#}", listing(&tree).unwrap_err());
        assert!(
            err.contains("lists device dev/null, which is not in the tree"),
            "{err}"
        );

        record.devices.clear();
        record.devices.insert("init".into(), null);
        std::fs::write(record_path(&tree).unwrap(), record.encode()).unwrap();
        let err = format!("{:#}", listing(&tree).unwrap_err());
        assert!(
            err.contains(
                "init: the rootless record makes it a device, but it is not an empty placeholder"
            ),
            "{err}"
        );

        std::fs::write(record_path(&tree).unwrap(), "format 1\n").unwrap();
        let err = format!("{:#}", listing(&tree).unwrap_err());
        assert!(err.contains("rootfs.rootless: no `owner"), "{err}");
    }

    #[test]
    fn only_the_initial_user_namespace_is_root() {
        assert!(is_initial_uid_map("         0          0 4294967295\n"));
        assert!(!is_initial_uid_map("         0       1000          1\n"));
        assert!(!is_initial_uid_map("0 1000 1\n1 100000 65536\n"));
        assert!(!is_initial_uid_map(""));
    }

    #[test]
    fn bad_records_name_the_line() {
        let f = Path::new("t.rootless");
        for (text, needle) in [
            ("owner 0 0\n", "no `format` line"),
            ("format 1\n", "no `owner"),
            ("format 2\nowner 0 0\n", "format 2"),
            (
                "format 1\nowner 0 0\nowner 1 1\n",
                "t.rootless:3: one `owner",
            ),
            ("format 1\nowner 0 x\n", "t.rootless:2: the gid"),
            (
                "format 1\nowner 0 0\nmode 0999 a\n",
                "t.rootless:3: the mode is not octal",
            ),
            (
                "format 1\nowner 0 0\nmode 17777 a\n",
                "t.rootless:3: the mode is not octal",
            ),
            (
                "format 1\nowner 0 0\nowner 1 1 a\nowner 2 2 a\n",
                "t.rootless:4: the owner of a is given twice",
            ),
            (
                "format 1\nowner 0 0\nowner 1 1 /a\n",
                "t.rootless:3: an owner needs",
            ),
            (
                "format 1\nowner 0 0\nchar 5 1 /dev/console\n",
                "t.rootless:3: a device needs",
            ),
            (
                "format 1\nowner 0 0\nchar 5 1 dev/../x\n",
                "t.rootless:3: a device needs",
            ),
            (
                "format 1\nowner 0 0\nchar 5 1 a\nchar 5 2 a\n",
                "listed twice",
            ),
            (
                "format 1\nowner 0 0\nfifo a\n",
                "t.rootless:3: unknown line",
            ),
        ] {
            let err = format!("{:#}", RootlessRecord::parse(text, f).unwrap_err());
            assert!(err.contains(needle), "{text:?}: {err}");
        }
    }
}
