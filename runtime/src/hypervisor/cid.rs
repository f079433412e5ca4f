//! Vsock guest CIDs, one per running VM, allocated race-free across
//! concurrent shims.
//!
//! With `/dev/vhost-vsock` a CID is a host-wide address: two VMs with the
//! same CID cannot both run, and a fixed, well-known CID makes every
//! sandbox's unauthenticated agent API easy to reach. Each VM therefore
//! leases a CID: `<dir>/<cid>.lock` locked exclusively (`flock`) for as long
//! as the lease lives. A lock, unlike a pidfile, is released by the kernel
//! when its holder dies, so a crashed shim frees its CID by itself.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The first CID a guest may have (0-2 are reserved).
pub const FIRST_GUEST_CID: u32 = 3;
/// How many CIDs are tried: far more VMs than one host runs.
pub const CID_RANGE: u32 = 65_536;

/// A CID held for one VM; dropping it frees the CID.
#[derive(Debug)]
pub struct CidLease {
    cid: u32,
    path: PathBuf,
    file: Option<File>,
}

impl CidLease {
    pub fn cid(&self) -> u32 {
        self.cid
    }

    /// Lease the lowest free CID, with lock files in `dir` (created 0700).
    pub fn acquire(dir: &Path) -> io::Result<CidLease> {
        ensure_dir(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
        for cid in FIRST_GUEST_CID..FIRST_GUEST_CID + CID_RANGE {
            let path = dir.join(format!("{cid}.lock"));
            let open = || {
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&path)
            };
            // The last lease of another process may remove the directory
            // (see Drop) between our making it and opening the file, again
            // and again while others come and go: make it again each time.
            let mut tries = 0;
            let file = loop {
                match open() {
                    Err(e) if e.kind() == io::ErrorKind::NotFound && tries < DIR_RACE_TRIES => {
                        tries += 1;
                        ensure_dir(dir)?;
                    }
                    other => break other,
                }
            }
            .map_err(|e| io::Error::new(e.kind(), format!("open {}: {e}", path.display())))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => continue,
                Err(TryLockError::Error(e)) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("lock {}: {e}", path.display()),
                    ))
                }
            }
            // A releasing holder unlinks its file before it unlocks: the
            // lock may be on an inode no longer at `path`. Only a lock on the
            // file `path` names counts.
            let held = file.metadata()?;
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.ino() == held.ino() && m.dev() == held.dev() => {
                    return Ok(CidLease {
                        cid,
                        path,
                        file: Some(file),
                    })
                }
                _ => continue,
            }
        }
        Err(io::Error::other(format!(
            "no free vsock guest CID in {FIRST_GUEST_CID}..{} (lock files in {})",
            FIRST_GUEST_CID + CID_RANGE,
            dir.display()
        )))
    }
}

/// How often a lease re-creates its directory that other leases' release
/// keeps removing, before it gives up with the error.
const DIR_RACE_TRIES: u32 = 1000;

/// `create_dir_all`, tolerant of the last lease of another process removing
/// the directory while it runs (create_dir_all then fails with EEXIST after
/// seeing the directory gone): it tries again.
fn ensure_dir(dir: &Path) -> io::Result<()> {
    let mut tries = 0;
    loop {
        match std::fs::create_dir_all(dir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < DIR_RACE_TRIES => {
                tries += 1
            }
            other => return other,
        }
    }
}

impl Drop for CidLease {
    fn drop(&mut self) {
        // Unlink while still locked, then unlock by closing (see acquire).
        let _ = std::fs::remove_file(&self.path);
        drop(self.file.take());
        // The directory goes with the last lease (it fails while others
        // hold theirs).
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_leases_get_distinct_cids_and_freed_ones_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = CidLease::acquire(dir.path()).unwrap();
        let b = CidLease::acquire(dir.path()).unwrap();
        assert_eq!(a.cid(), FIRST_GUEST_CID);
        assert_eq!(b.cid(), FIRST_GUEST_CID + 1);
        drop(a);
        assert!(
            !dir.path().join("3.lock").exists(),
            "a freed lease leaves no file"
        );
        assert!(
            dir.path().is_dir(),
            "the directory stays while a lease is held"
        );
        let c = CidLease::acquire(dir.path()).unwrap();
        assert_eq!(c.cid(), FIRST_GUEST_CID);
        drop((b, c));
        assert!(!dir.path().exists(), "the last lease removes the directory");
    }

    #[test]
    fn threads_racing_never_share_a_cid() {
        use std::collections::HashSet;
        use std::sync::{Arc, Barrier, Mutex};
        // flock locks belong to open file descriptions, so threads that
        // each open the file contend exactly as separate shims do. `held`
        // mirrors which CIDs are leased right now: a lease granted while
        // its CID is in there was granted twice.
        let dir = tempfile::tempdir().unwrap();
        let held: Arc<Mutex<HashSet<u32>>> = Arc::default();
        let barrier = Arc::new(Barrier::new(6));
        let handles: Vec<_> = (0..6)
            .map(|_| {
                let (p, b, held) = (dir.path().to_path_buf(), barrier.clone(), held.clone());
                std::thread::spawn(move || {
                    b.wait();
                    for round in 0..40 {
                        let lease = CidLease::acquire(&p).unwrap();
                        assert!(
                            held.lock().unwrap().insert(lease.cid()),
                            "CID {} leased twice",
                            lease.cid()
                        );
                        if round % 3 == 0 {
                            std::thread::yield_now();
                        }
                        held.lock().unwrap().remove(&lease.cid());
                        drop(lease);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!(!dir.path().exists(), "released leases leave nothing");
    }
}
