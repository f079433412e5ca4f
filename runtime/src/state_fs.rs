//! Removal of what the runtime created under its own state root, and
//! nothing else.
//!
//! The shim's `delete` action and every teardown remove per-sandbox
//! directories whose names come from ids. Even with ids validated
//! ([`protocols::ids`]), a path string is not enough: a symlink planted at
//! any component below the root (`shared -> /var`) would carry a plain
//! recursive removal out of the root, and a mount left below a directory
//! would expose the mounted filesystem's files to it. So removal here:
//! - walks from the root one component at a time with `O_NOFOLLOW`
//!   directory descriptors, so no symlink is ever followed below the root;
//! - refuses any entry that is not what the runtime creates (a symlink
//!   where a directory should be is left in place and reported);
//! - never descends into a mount point: a directory holding a mount (by the
//!   mount table, which also sees bind mounts of the same filesystem) is
//!   refused whole, and a directory on another device is never entered;
//! - removes files, sockets and the runtime's own empty bind targets with
//!   `unlinkat` relative to the descriptor it reached them through.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// What [`remove_below`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// Nothing was there (also when a parent component is missing).
    Absent,
}

fn refuse(path: &Path, why: &str) -> io::Error {
    io::Error::other(format!("{}: {why}; left in place", path.display()))
}

fn errno_at(path: &Path, what: &str, e: Errno) -> io::Error {
    io::Error::new(
        io::Error::from(e).kind(),
        format!("{what} {}: {e}", path.display()),
    )
}

/// The components of `rel`: each a plain name (no `/`, `.`, `..`, nothing
/// absolute).
fn plain_components(rel: &Path) -> io::Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "{}: not a plain relative path below the state root",
                        rel.display()
                    ),
                ))
            }
        }
    }
    if out.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to remove the state root itself",
        ));
    }
    Ok(out)
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Remove `root/rel` and what it contains, where `root` is one of the
/// runtime's state roots (trusted: it comes from the configuration) and
/// `rel` names what the runtime created below it. See the module doc for
/// what is refused. A missing entry is [`Removal::Absent`].
pub fn remove_below(root: &Path, rel: &Path) -> io::Result<Removal> {
    let names = plain_components(rel)?;
    // The mount table lists canonical paths; a root reached through a
    // symlink (/var/run -> /run) must be compared in that form.
    let root = match std::fs::canonicalize(root) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removal::Absent),
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", root.display()))),
    };
    let Some((dir, last, path)) = walk_to_parent(&root, &names)? else {
        return Ok(Removal::Absent);
    };
    remove_entry(&dir, last, &path)
}

/// The directory holding the last of `names` below `root`, reached one
/// `O_NOFOLLOW` component at a time, with that last name and its full path;
/// `None` when `root` or a component is missing.
fn walk_to_parent<'n>(
    root: &Path,
    names: &[&'n OsStr],
) -> io::Result<Option<(Dir, &'n OsStr, PathBuf)>> {
    let mut dir = match Dir::open(root, DIR_FLAGS, Mode::empty()) {
        Ok(d) => d,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(errno_at(root, "open state root", e)),
    };
    let mut path = root.to_path_buf();
    let (last, parents) = names.split_last().expect("plain_components is never empty");
    for name in parents {
        path.push(name);
        dir = match Dir::openat(Some(dir.as_raw_fd()), *name, DIR_FLAGS, Mode::empty()) {
            Ok(d) => d,
            Err(Errno::ENOENT) => return Ok(None),
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                return Err(refuse(
                    &path,
                    "not a directory the runtime created (a symlink?)",
                ))
            }
            Err(e) => return Err(errno_at(&path, "open", e)),
        };
    }
    path.push(last);
    Ok(Some((dir, last, path)))
}

/// Create `root/rel` (and the missing directories on the way) with `mode`,
/// whatever the umask, without following a symlink below `root`: a planted
/// link where a directory belongs is an error, not a way out of the root.
/// An existing directory is kept as it is. Returns the path.
pub fn create_below(root: &Path, rel: &Path, mode: u32) -> io::Result<PathBuf> {
    let names = plain_components(rel)?;
    std::fs::create_dir_all(root)
        .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", root.display())))?;
    let mut dir = Dir::open(root, DIR_FLAGS, Mode::empty())
        .map_err(|e| errno_at(root, "open state root", e))?;
    let mut path = root.to_path_buf();
    for name in names {
        path.push(name);
        let created = match mkdirat(Some(dir.as_raw_fd()), name, Mode::from_bits_truncate(mode)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(e) => return Err(errno_at(&path, "create", e)),
        };
        dir = match Dir::openat(Some(dir.as_raw_fd()), name, DIR_FLAGS, Mode::empty()) {
            Ok(d) => d,
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                return Err(refuse(
                    &path,
                    "not a directory the runtime created (a symlink?)",
                ))
            }
            Err(e) => return Err(errno_at(&path, "open", e)),
        };
        if created {
            // mkdir applies the umask; the mode asked for is the mode meant.
            fchmod(dir.as_raw_fd(), Mode::from_bits_truncate(mode))
                .map_err(|e| errno_at(&path, "chmod", e))?;
        }
    }
    Ok(path)
}

/// The contents of the regular file `root/rel`, reached without following
/// any symlink below `root`; `None` when it (or a parent) does not exist.
pub fn read_below(root: &Path, rel: &Path) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read;
    let names = plain_components(rel)?;
    let Some((dir, last, path)) = walk_to_parent(root, &names)? else {
        return Ok(None);
    };
    let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let fd = match nix::fcntl::openat(Some(dir.as_raw_fd()), last, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => {
            return Err(refuse(&path, "a symlink where the runtime writes a file"))
        }
        Err(e) => return Err(errno_at(&path, "open", e)),
    };
    // SAFETY: openat returned a new descriptor that nothing else owns; the
    // File closes it once.
    let mut file = unsafe { <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    if !file.metadata()?.is_file() {
        return Err(refuse(&path, "not a regular file"));
    }
    let mut data = Vec::new();
    file.by_ref().take(1 << 20).read_to_end(&mut data)?;
    Ok(Some(data))
}

/// Remove the entry `name` of `parent` (reached at `path`).
fn remove_entry(parent: &Dir, name: &OsStr, path: &Path) -> io::Result<Removal> {
    let st = match fstatat(Some(parent.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(Removal::Absent),
        Err(e) => return Err(errno_at(path, "stat", e)),
    };
    match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => {}
        SFlag::S_IFLNK => {
            return Err(refuse(
                path,
                "a symlink where the runtime creates a directory",
            ))
        }
        _ => {
            unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| errno_at(path, "remove", e))?;
            return Ok(Removal::Removed);
        }
    }
    if let Some(m) = mounts_under(path).first() {
        return Err(refuse(
            path,
            &format!("{} is still mounted below it", m.display()),
        ));
    }
    let dir = Dir::openat(Some(parent.as_raw_fd()), name, DIR_FLAGS, Mode::empty())
        .map_err(|e| errno_at(path, "open", e))?;
    let parent_dev = fstat(parent.as_raw_fd())
        .map_err(|e| errno_at(path, "stat parent of", e))?
        .st_dev;
    if fstat(dir.as_raw_fd())
        .map_err(|e| errno_at(path, "stat", e))?
        .st_dev
        != parent_dev
    {
        return Err(refuse(path, "a mount point"));
    }
    clear_dir(dir, path)?;
    unlinkat(Some(parent.as_raw_fd()), name, UnlinkatFlags::RemoveDir)
        .map_err(|e| errno_at(path, "remove", e))?;
    Ok(Removal::Removed)
}

/// Remove everything in `dir` (reached at `path`), depth first, on its
/// own device only.
fn clear_dir(mut dir: Dir, path: &Path) -> io::Result<()> {
    let dev = fstat(dir.as_raw_fd())
        .map_err(|e| errno_at(path, "stat", e))?
        .st_dev;
    // Names first: unlinking while readdir walks the same stream is
    // unspecified.
    let mut names: Vec<Vec<u8>> = Vec::new();
    for entry in dir.iter() {
        let entry = entry.map_err(|e| errno_at(path, "read", e))?;
        let n = entry.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    for n in names {
        let name = OsStr::from_bytes(&n);
        let child = path.join(name);
        let st = match fstatat(Some(dir.as_raw_fd()), name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(errno_at(&child, "stat", e)),
        };
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
            if st.st_dev != dev {
                return Err(refuse(&child, "a mount point"));
            }
            let sub = Dir::openat(Some(dir.as_raw_fd()), name, DIR_FLAGS, Mode::empty())
                .map_err(|e| errno_at(&child, "open", e))?;
            clear_dir(sub, &child)?;
            unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::RemoveDir)
        } else {
            // Files, sockets and symlinks alike: unlinking a symlink
            // removes the link, never what it points to.
            unlinkat(Some(dir.as_raw_fd()), name, UnlinkatFlags::NoRemoveDir)
        }
        .map_err(|e| errno_at(&child, "remove", e))?;
    }
    Ok(())
}

/// The mount points at or below `dir`, deepest first (from
/// /proc/self/mountinfo, which lists canonical paths).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(OsStr::from_bytes(&unescape_mountinfo(p))))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.dedup();
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(n);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    fn victim(dir: &Path) -> PathBuf {
        let v = dir.join("victim");
        std::fs::create_dir_all(v.join("sub")).unwrap();
        std::fs::write(v.join("precious"), b"keep").unwrap();
        std::fs::write(v.join("sub/also"), b"keep").unwrap();
        v
    }

    fn intact(v: &Path) {
        assert_eq!(std::fs::read(v.join("precious")).unwrap(), b"keep");
        assert_eq!(std::fs::read(v.join("sub/also")).unwrap(), b"keep");
    }

    #[test]
    fn removes_a_created_tree_with_files_and_inner_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let v = victim(t.path());
        let sb = root.join("shared/sandboxes/sb1/c1/rootfs");
        std::fs::create_dir_all(&sb).unwrap();
        std::fs::write(root.join("shared/sandboxes/sb1/c1/hosts"), b"").unwrap();
        // A symlink inside our own tree is unlinked, not followed.
        symlink(&v, root.join("shared/sandboxes/sb1/c1/link")).unwrap();
        let r = remove_below(&root, Path::new("shared/sandboxes/sb1")).unwrap();
        assert_eq!(r, Removal::Removed);
        assert!(!root.join("shared/sandboxes/sb1").exists());
        assert!(root.join("shared/sandboxes").is_dir());
        intact(&v);
        assert_eq!(
            remove_below(&root, Path::new("shared/sandboxes/sb1")).unwrap(),
            Removal::Absent
        );
        assert_eq!(
            remove_below(&root, Path::new("nothing/here")).unwrap(),
            Removal::Absent
        );
    }

    #[test]
    fn never_follows_a_symlinked_component() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let v = victim(t.path());
        std::fs::create_dir_all(root.join("shared")).unwrap();
        // shared/sandboxes -> victim's parent: "sandboxes/victim" would be
        // the victim through a plain path walk.
        symlink(t.path(), root.join("shared/sandboxes")).unwrap();
        let e = remove_below(&root, Path::new("shared/sandboxes/victim")).unwrap_err();
        assert!(e.to_string().contains("left in place"), "{e}");
        intact(&v);
        // The leaf itself a symlink to the victim.
        std::fs::create_dir_all(root.join("sbx")).unwrap();
        symlink(&v, root.join("sbx/sb1")).unwrap();
        let e = remove_below(&root, Path::new("sbx/sb1")).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        intact(&v);
        assert!(
            root.join("sbx/sb1").symlink_metadata().is_ok(),
            "the planted link is left for inspection"
        );
    }

    #[test]
    fn creates_with_the_mode_asked_and_never_through_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let v = victim(t.path());
        let p = create_below(&root, Path::new("a/b"), 0o700).unwrap();
        assert_eq!(p, root.join("a/b"));
        for d in ["a", "a/b"] {
            let mode = std::fs::metadata(root.join(d))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777;
            assert_eq!(mode, 0o700, "{d}");
        }
        symlink(&v, root.join("a/link")).unwrap();
        let e = create_below(&root, Path::new("a/link/new"), 0o700).unwrap_err();
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(!v.join("new").exists());
        intact(&v);
    }

    #[test]
    fn reads_only_without_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let v = victim(t.path());
        create_below(&root, Path::new("sb1"), 0o700).unwrap();
        std::fs::write(root.join("sb1/rec"), b"12 34\n").unwrap();
        assert_eq!(
            read_below(&root, Path::new("sb1/rec")).unwrap().unwrap(),
            b"12 34\n"
        );
        assert_eq!(read_below(&root, Path::new("sb1/none")).unwrap(), None);
        assert_eq!(read_below(&root, Path::new("sb2/rec")).unwrap(), None);
        symlink(v.join("precious"), root.join("sb1/link")).unwrap();
        assert!(read_below(&root, Path::new("sb1/link")).is_err());
        symlink(&v, root.join("sb3")).unwrap();
        assert!(read_below(&root, Path::new("sb3/precious")).is_err());
    }

    #[test]
    fn refuses_paths_that_are_not_plain_names() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let v = victim(t.path());
        for rel in ["../victim", "/victim", "a/../../victim", "", "."] {
            let e = remove_below(&root, Path::new(rel)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{rel:?}: {e}");
        }
        intact(&v);
    }

    #[test]
    fn mountinfo_unescaping() {
        assert_eq!(unescape_mountinfo("/a\\040b"), b"/a b");
        assert_eq!(unescape_mountinfo("/plain"), b"/plain");
        assert_eq!(unescape_mountinfo("/x\\134y"), b"/x\\y");
        assert_eq!(unescape_mountinfo("/caf\u{e9}"), "/caf\u{e9}".as_bytes());
    }

    #[test]
    fn refuses_a_directory_holding_a_mount() {
        // `/` always holds mounts (/proc at least): the mount-table check
        // must refuse before anything is touched. The root here is `/` and
        // the entry `proc`, which is itself a mount point.
        let e = remove_below(Path::new("/"), Path::new("proc")).unwrap_err();
        assert!(e.to_string().contains("left in place"), "{e}");
        assert!(Path::new("/proc/self").exists());
    }
}
