//! The content-addressed step cache.
//!
//! A step's key is the sha256 of everything it consumes, written down as
//! labelled inputs (`StepInputs`). Equal key: the step is skipped and its
//! entry reused. A step builds into a temp dir inside the cache and the dir is
//! renamed into place only when the step succeeded, so a crash or an error
//! never leaves a partial entry.
//!
//! Concurrent runs share the cache safely: building an entry holds a lock on
//! that entry only (a second run wanting the same entry waits, then finds it
//! built), finished entries are immutable and read without locks, and every
//! process works in its own temp dir. A run therefore never blocks another
//! run that needs different entries (`cargo xtask test` runs xtask from its
//! tests while it holds entries of its own).
//!
//! Layout under the cache root:
//! ```text
//! inputs/<sha256>/<file>       verified downloads (see fetch.rs)
//! steps/<step>/<key>/          a finished entry; `.inputs.json` inside
//! steps/<step>/.<key>.lock     flock(2)ed while the entry is built
//! steps/<step>/last.json       the inputs of the last run (for "why it ran")
//! tmp/<pid>-<n>/               one process's work dirs; a dead pid's are swept
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::hash;
use crate::ui::Ui;

/// Bump when the cache layout itself changes.
const CACHE_FORMAT: u32 = 1;

pub struct Cache {
    root: PathBuf,
    /// This process's work area under tmp/, removed on drop.
    work: PathBuf,
}

/// Everything a step consumes, labelled so that a miss can say what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInputs {
    step: String,
    items: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    pub key: String,
    pub hit: bool,
}

impl StepInputs {
    /// `format` is the step's own format version: bump it when the step's
    /// code changes what it produces.
    pub fn new(step: &str, format: u32) -> Self {
        let mut items = BTreeMap::new();
        items.insert(
            "step.format".to_string(),
            format!("{CACHE_FORMAT}.{format}"),
        );
        StepInputs {
            step: step.to_string(),
            items,
        }
    }

    pub fn step(&self) -> &str {
        &self.step
    }

    /// A plain value (option, version string, digest).
    pub fn value(&mut self, label: &str, value: impl ToString) -> &mut Self {
        self.items.insert(label.to_string(), value.to_string());
        self
    }

    /// A file's content.
    pub fn file(&mut self, label: &str, path: &Path) -> Result<&mut Self> {
        let digest = hash::file_sha256(path)?;
        self.items.insert(label.to_string(), digest);
        Ok(self)
    }

    /// A source tree's content.
    pub fn tree(&mut self, label: &str, path: &Path) -> Result<&mut Self> {
        let digest = hash::tree_sha256(path).with_context(|| format!("hash {}", path.display()))?;
        self.items.insert(label.to_string(), digest);
        Ok(self)
    }

    pub fn key(&self) -> String {
        let mut text = format!("step={}\n", self.step);
        for (k, v) in &self.items {
            text.push_str(k);
            text.push('=');
            text.push_str(v);
            text.push('\n');
        }
        hash::bytes_sha256(text.as_bytes())
    }

    pub fn items(&self) -> &BTreeMap<String, String> {
        &self.items
    }

    /// What differs from a previous run's inputs, for `-v`.
    pub fn changes_since(&self, previous: &BTreeMap<String, String>) -> Vec<String> {
        let mut out = Vec::new();
        for (k, v) in &self.items {
            match previous.get(k) {
                None => out.push(format!("{k} is new")),
                Some(old) if old != v => {
                    out.push(format!("{k} changed ({} -> {})", short(old), short(v)))
                }
                _ => {}
            }
        }
        for k in previous.keys() {
            if !self.items.contains_key(k) {
                out.push(format!("{k} is gone"));
            }
        }
        out
    }
}

fn short(s: &str) -> &str {
    if s.len() > 16 {
        &s[..12]
    } else {
        s
    }
}

impl Cache {
    /// Opens (creating if needed) the cache, sweeping work dirs that
    /// crashed runs left behind.
    pub fn open(root: &Path, ui: &Ui) -> Result<Cache> {
        let _ = ui;
        let tmp = root.join("tmp");
        fs::create_dir_all(&tmp).with_context(|| {
            format!(
                "cache dir {} cannot be created; pass another with --cache-dir",
                root.display()
            )
        })?;
        for e in fs::read_dir(&tmp)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let owner = name.split('-').next().and_then(|p| p.parse::<u32>().ok());
            let alive = owner.is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if !alive {
                let _ = remove_tree(&e.path());
            }
        }
        let work = tempfile::Builder::new()
            .prefix(&format!("{}-", std::process::id()))
            .tempdir_in(&tmp)
            .with_context(|| format!("cache dir {} is not writable", root.display()))?
            .keep();
        Ok(Cache {
            root: root.to_path_buf(),
            work,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn entry_dir(&self, inputs: &StepInputs) -> PathBuf {
        self.root
            .join("steps")
            .join(inputs.step())
            .join(inputs.key())
    }

    pub fn lookup(&self, inputs: &StepInputs) -> Option<Entry> {
        let dir = self.entry_dir(inputs);
        dir.is_dir().then(|| Entry {
            dir,
            key: inputs.key(),
            hit: true,
        })
    }

    /// A fresh work dir inside the cache (same filesystem, so entries can be
    /// renamed into place).
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&self.work)?)
    }

    /// Returns the entry for `inputs`, running `build` into an empty dir when
    /// there is none. The dir becomes the entry only if `build` succeeds.
    pub fn step(
        &self,
        inputs: &StepInputs,
        ui: &Ui,
        build: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Entry> {
        let step_dir = self.root.join("steps").join(inputs.step());
        let last_path = step_dir.join("last.json");
        if let Some(entry) = self.lookup(inputs) {
            ui.verbose(&format!(
                "{}: cache hit {}",
                inputs.step(),
                &entry.key[..12]
            ));
            return Ok(entry);
        }
        fs::create_dir_all(&step_dir)?;
        let _guard = EntryLock::take(&step_dir.join(format!(".{}.lock", inputs.key())), ui)?;
        // Another run may have built it while we waited.
        if let Some(entry) = self.lookup(inputs) {
            ui.verbose(&format!(
                "{}: built by a concurrent run {}",
                inputs.step(),
                &entry.key[..12]
            ));
            return Ok(entry);
        }
        match fs::read(&last_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<BTreeMap<String, String>>(&b).ok())
        {
            Some(prev) => {
                let changes = inputs.changes_since(&prev);
                ui.verbose(&format!(
                    "{}: runs because {}",
                    inputs.step(),
                    changes.join(", ")
                ));
            }
            None => ui.verbose(&format!(
                "{}: runs because nothing is cached for it",
                inputs.step()
            )),
        }
        let work = self.temp_dir(inputs.step())?;
        let out = work.path().join("out");
        fs::create_dir(&out)?;
        build(&out)?;
        let record = serde_json::to_vec_pretty(inputs.items())?;
        fs::write(out.join(".inputs.json"), &record)?;
        let dest = self.entry_dir(inputs);
        fs::rename(&out, &dest).with_context(|| format!("move entry into {}", dest.display()))?;
        write_atomic(&last_path, &record)?;
        Ok(Entry {
            dir: dest,
            key: inputs.key(),
            hit: false,
        })
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        let _ = remove_tree(&self.work);
    }
}

/// An exclusive flock(2) on one entry's lock file, released on drop.
struct EntryLock {
    _file: File,
}

impl EntryLock {
    fn take(path: &Path, ui: &Ui) -> Result<EntryLock> {
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?;
        // File::lock is flock(2): the lock lives as long as `f`.
        if f.try_lock().is_err() {
            ui.info(&format!(
                "waiting for another run building {}",
                path.display()
            ));
            // This time blocking until the holder is done.
            if let Err(e) = f.lock() {
                bail!("lock {}: {e}", path.display());
            }
        }
        Ok(EntryLock { _file: f })
    }
}

/// Writes a file by way of a temp file in the same dir and a rename (keeps
/// the mode of the file it replaces, else 0644).
pub use host_support::fs::write_atomic;

/// Every non-directory below `dir` (symlinks are listed, not followed), sorted.
pub use host_support::fs::files_below;

/// Removes a tree that may hold read-only dirs (cargo and rootfs trees do).
pub use host_support::fs::remove_tree;

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet() -> Ui {
        Ui::quiet()
    }

    #[test]
    fn miss_then_hit() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path(), &quiet()).unwrap();
        let mut inputs = StepInputs::new("demo", 1);
        inputs.value("option", "a");
        let mut runs = 0;
        let first = cache
            .step(&inputs, &quiet(), |out| {
                runs += 1;
                fs::write(out.join("result"), b"42")?;
                Ok(())
            })
            .unwrap();
        assert!(!first.hit);
        let second = cache
            .step(&inputs, &quiet(), |_| panic!("must not run on a hit"))
            .unwrap();
        assert!(second.hit);
        assert_eq!(first.dir, second.dir);
        assert_eq!(fs::read(second.dir.join("result")).unwrap(), b"42");
        assert_eq!(runs, 1);
    }

    #[test]
    fn any_input_change_is_a_miss_and_is_reported() {
        let mut a = StepInputs::new("demo", 1);
        a.value("x", "1").value("y", "2");
        let mut b = a.clone();
        b.value("y", "3");
        assert_ne!(a.key(), b.key());
        let changes = b.changes_since(a.items());
        assert_eq!(changes, vec!["y changed (2 -> 3)".to_string()]);
        let mut c = StepInputs::new("demo", 2);
        c.value("x", "1").value("y", "2");
        assert_ne!(a.key(), c.key(), "the step's format version is an input");
    }

    #[test]
    fn failed_build_leaves_no_entry_and_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let cache = Cache::open(d.path(), &quiet()).unwrap();
        let inputs = StepInputs::new("demo", 1);
        let err = cache
            .step(&inputs, &quiet(), |out| {
                fs::write(out.join("half"), b"partial")?;
                bail!("boom")
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert!(cache.lookup(&inputs).is_none());
        assert_eq!(
            fs::read_dir(&cache.work).unwrap().count(),
            0,
            "the failed work dir is gone"
        );
        // and a later successful run creates it
        cache
            .step(&inputs, &quiet(), |out| Ok(fs::write(out.join("ok"), b"")?))
            .unwrap();
        assert!(cache.lookup(&inputs).is_some());
    }

    #[test]
    fn debris_of_a_crashed_run_is_swept_but_live_runs_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let live = Cache::open(d.path(), &quiet()).unwrap();
        // pid 0 never names a live process here.
        fs::create_dir_all(d.path().join("tmp/0-crashed/out")).unwrap();
        let _c = Cache::open(d.path(), &quiet()).unwrap();
        assert!(!d.path().join("tmp/0-crashed").exists());
        assert!(live.work.exists(), "another live run's work dir stays");
        drop(live);
    }

    #[test]
    fn atomic_writes_are_readable_and_keep_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.json");
        write_atomic(&p, b"1").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"2").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(fs::read(&p).unwrap(), b"2");
    }

    #[test]
    fn concurrent_runs_build_an_entry_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::sync::Arc;
        let d = tempfile::tempdir().unwrap();
        let runs = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let root = d.path().to_path_buf();
                let runs = runs.clone();
                std::thread::spawn(move || {
                    // Each its own Cache, as separate processes would have.
                    let cache = Cache::open(&root, &quiet()).unwrap();
                    let inputs = StepInputs::new("demo", 1);
                    cache
                        .step(&inputs, &quiet(), |out| {
                            runs.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(200));
                            Ok(fs::write(out.join("x"), b"1")?)
                        })
                        .unwrap()
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
