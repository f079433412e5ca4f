//! The content-addressed step cache.
//!
//! A step's key is the sha256 of everything it consumes, written down as
//! labelled inputs (`StepInputs`). Equal key: the step is skipped and its
//! entry reused. A step builds into a temp dir inside the cache and the dir is
//! renamed into place only when the step succeeded, so a crash or an error
//! never leaves a partial entry.
//!
//! Every entry is sealed when it is built (`.seal.json`: the digest of each
//! of its files) and checked against the seal on every lookup, so a hit is
//! an entry with exactly the bytes it was built with; an entry that fails
//! the check is never used, and building the step replaces it. Verified
//! downloads are re-hashed on every use the same way.
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
//! steps/<step>/<key>/          a finished entry; `.inputs.json` and `.seal.json` inside
//! steps/<step>/.<key>.lock     flock(2)ed while the entry is built
//! steps/<step>/last.json       the inputs of the last run (for "why it ran")
//! tmp/run-<n>/                 one process's work dir, flock()ed while it lives
//! verified/<kind>/<key>.json   the tests' records about keys (repro)
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
    /// flock(2) on `work` (see `Cache::open`).
    _work_lock: File,
}

/// A work dir younger than this is never swept: its creator may not have
/// locked it yet.
const SWEEP_MIN_AGE: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes the work dirs of runs that are gone: a dir whose lock nobody
/// holds (the kernel released it when its process died) and that is older
/// than [`SWEEP_MIN_AGE`].
fn sweep_dead_work_dirs(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        let old_enough = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= SWEEP_MIN_AGE);
        if !old_enough {
            continue;
        }
        let Ok(dir) = File::open(&path) else {
            continue;
        };
        if dir.try_lock().is_ok() {
            let _ = remove_tree(&path);
        }
    }
}

/// Everything a step consumes, labelled so that a miss can say what changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepInputs {
    step: String,
    items: BTreeMap<String, String>,
    /// The files and trees behind some items, to check after a build that
    /// they did not change while the step read them.
    sources: Vec<(String, Source)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    File(PathBuf),
    Tree(PathBuf),
}

/// Digests computed once per command: a source tree, a file or a tool's
/// version is read once however many steps consume it.
#[derive(Default)]
pub struct Digests {
    memo: std::cell::RefCell<BTreeMap<String, String>>,
}

impl Digests {
    fn memo(&self, key: String, compute: impl FnOnce() -> Result<String>) -> Result<String> {
        if let Some(v) = self.memo.borrow().get(&key) {
            return Ok(v.clone());
        }
        let v = compute()?;
        self.memo.borrow_mut().insert(key, v.clone());
        Ok(v)
    }

    pub fn file(&self, path: &Path) -> Result<String> {
        self.memo(format!("file:{}", path.display()), || {
            hash::file_sha256(path)
        })
    }

    pub fn tree(&self, path: &Path) -> Result<String> {
        self.memo(format!("tree:{}", path.display()), || {
            hash::tree_sha256(path).with_context(|| format!("hash {}", path.display()))
        })
    }

    /// The first line of `program flag` (a compiler's version, say), or
    /// `unavailable` when it cannot be run: a step that needs the tool then
    /// misses the cache, and the executor names the missing tool.
    pub fn tool_version(&self, program: &str, flag: &str) -> String {
        self.memo(format!("tool:{program} {flag}"), || {
            Ok(crate::tools::version_line(program, flag)
                .unwrap_or_else(|_| "unavailable".to_string()))
        })
        .expect("infallible")
    }
}

/// A finished, verified cache entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub dir: PathBuf,
    step: String,
    pub key: String,
    /// Found in the cache (true) or built by this run.
    pub hit: bool,
    seal: Seal,
}

impl Entry {
    /// The sha256 of one of the entry's regular files, from its seal (the
    /// file was verified against it when the entry was looked up).
    pub fn sha256(&self, rel: &str) -> Result<String> {
        match self.seal.files.get(rel) {
            Some(d) if d.len() == 64 => Ok(d.clone()),
            _ => bail!(
                "{}: no regular file {rel} in this entry",
                self.dir.display()
            ),
        }
    }

    /// A file of the entry.
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
}

/// What a lookup found.
#[derive(Debug)]
pub enum Lookup {
    Hit(Entry),
    Miss,
    /// An entry exists but does not match its seal (or has none): it is
    /// never used, and building the step replaces it.
    Corrupt(String),
}

/// The digest of every file of an entry, written when the entry is built
/// and checked on every later use: a regular file's sha256, a symlink's
/// target (`link:...`), a device node's mode and number (`node:...`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Seal {
    files: BTreeMap<String, String>,
}

const SEAL: &str = ".seal.json";
const INPUTS_RECORD: &str = ".inputs.json";

impl Seal {
    fn of(dir: &Path) -> Result<Seal> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let mut files = BTreeMap::new();
        for path in files_below(dir)? {
            let rel = path
                .strip_prefix(dir)
                .expect("below dir")
                .to_string_lossy()
                .into_owned();
            if rel == SEAL || rel == INPUTS_RECORD {
                continue;
            }
            let meta = fs::symlink_metadata(&path)?;
            let ft = meta.file_type();
            let digest = if ft.is_file() {
                hash::file_sha256(&path)?
            } else if ft.is_symlink() {
                format!("link:{}", fs::read_link(&path)?.to_string_lossy())
            } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
                format!("node:{:o}:{}", meta.mode(), meta.rdev())
            } else {
                bail!("{}: sockets cannot be cached", path.display());
            };
            files.insert(rel, digest);
        }
        Ok(Seal { files })
    }

    /// Checks `dir` against its seal; the reason when it does not match.
    fn verify(dir: &Path) -> Result<Seal, String> {
        let recorded: Seal = fs::read(dir.join(SEAL))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| format!("{} has no readable {SEAL}", dir.display()))?;
        let now = Seal::of(dir).map_err(|e| format!("{e:#}"))?;
        if now == recorded {
            return Ok(recorded);
        }
        let changed = recorded
            .files
            .iter()
            .find(|(k, v)| now.files.get(*k) != Some(v))
            .map(|(k, _)| k.clone())
            .or_else(|| {
                now.files
                    .keys()
                    .find(|k| !recorded.files.contains_key(*k))
                    .cloned()
            })
            .unwrap_or_default();
        Err(format!(
            "{}: {changed} does not match the entry's seal",
            dir.display()
        ))
    }
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
            sources: Vec::new(),
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
    pub fn file(&mut self, digests: &Digests, label: &str, path: &Path) -> Result<&mut Self> {
        let digest = digests.file(path)?;
        self.items.insert(label.to_string(), digest);
        self.sources
            .push((label.to_string(), Source::File(path.to_path_buf())));
        Ok(self)
    }

    /// A source tree's content.
    pub fn tree(&mut self, digests: &Digests, label: &str, path: &Path) -> Result<&mut Self> {
        let digest = digests.tree(path)?;
        self.items.insert(label.to_string(), digest);
        self.sources
            .push((label.to_string(), Source::Tree(path.to_path_buf())));
        Ok(self)
    }

    /// The labels of file and tree inputs whose content is no longer what
    /// the key was computed from (hashed afresh).
    pub fn changed_sources(&self) -> Result<Vec<String>> {
        let mut changed = Vec::new();
        for (label, source) in &self.sources {
            let now = match source {
                Source::File(p) => hash::file_sha256(p)?,
                Source::Tree(p) => hash::tree_sha256(p)?,
            };
            if self.items.get(label) != Some(&now) {
                changed.push(label.clone());
            }
        }
        Ok(changed)
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
        sweep_dead_work_dirs(&tmp);
        let work = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(&tmp)
            .with_context(|| format!("cache dir {} is not writable", root.display()))?
            .keep();
        // Held for this process's whole life, released by the kernel when it
        // dies however it dies: that is what tells a live run's work dir
        // from a crashed one's, also across PID namespaces (where a pid in
        // the name would say nothing).
        let lock = File::open(&work)
            .and_then(|f| f.lock().map(|()| f))
            .with_context(|| format!("lock {}", work.display()))?;
        Ok(Cache {
            root: root.to_path_buf(),
            work,
            _work_lock: lock,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn step_dir(&self, step: &str) -> PathBuf {
        self.root.join("steps").join(step)
    }

    fn entry_dir(&self, inputs: &StepInputs) -> PathBuf {
        self.step_dir(inputs.step()).join(inputs.key())
    }

    /// The entry for `inputs`, verified against its seal.
    pub fn lookup(&self, inputs: &StepInputs) -> Lookup {
        let dir = self.entry_dir(inputs);
        if !dir.is_dir() {
            return Lookup::Miss;
        }
        match Seal::verify(&dir) {
            Ok(seal) => Lookup::Hit(Entry {
                dir,
                step: inputs.step().to_string(),
                key: inputs.key(),
                hit: true,
                seal,
            }),
            Err(why) => Lookup::Corrupt(why),
        }
    }

    /// Whether an entry for `inputs` exists (not verified: for steps a run
    /// will not use).
    pub fn has_entry(&self, inputs: &StepInputs) -> bool {
        self.entry_dir(inputs).join(SEAL).is_file()
    }

    /// Why `inputs` has no entry: what changed since the step last ran.
    pub fn why_missing(&self, inputs: &StepInputs) -> String {
        let last = self.step_dir(inputs.step()).join("last.json");
        match fs::read(last)
            .ok()
            .and_then(|b| serde_json::from_slice::<BTreeMap<String, String>>(&b).ok())
        {
            Some(prev) => {
                let changes = inputs.changes_since(&prev);
                if changes.is_empty() {
                    "its entry is gone from the cache".to_string()
                } else {
                    changes.join(", ")
                }
            }
            None => "nothing is cached for it".to_string(),
        }
    }

    /// A fresh work dir inside the cache (same filesystem, so entries can be
    /// renamed into place).
    pub fn temp_dir(&self, prefix: &str) -> Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(&self.work)?)
    }

    /// Builds the entry for `inputs`: under the entry's lock, `build` fills
    /// an empty dir, which is sealed and renamed into place only if `build`
    /// succeeded. An entry another run finished meanwhile is taken instead;
    /// a corrupt one is replaced.
    pub fn build(
        &self,
        inputs: &StepInputs,
        ui: &Ui,
        build: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<Entry> {
        let step_dir = self.step_dir(inputs.step());
        fs::create_dir_all(&step_dir)?;
        let _guard = EntryLock::take(&step_dir.join(format!(".{}.lock", inputs.key())), ui)?;
        let dest = self.entry_dir(inputs);
        match self.lookup(inputs) {
            Lookup::Hit(entry) => {
                ui.verbose(&format!(
                    "{}: built by a concurrent run {}",
                    inputs.step(),
                    &entry.key[..12]
                ));
                return Ok(entry);
            }
            Lookup::Corrupt(why) => {
                ui.info(&format!("warning: {why}; rebuilding it"));
                let trash = self.temp_dir("corrupt")?;
                fs::rename(&dest, trash.path().join("entry"))
                    .with_context(|| format!("move {} aside", dest.display()))?;
            }
            Lookup::Miss => {}
        }
        let work = self.temp_dir(inputs.step())?;
        let out = work.path().join("out");
        fs::create_dir(&out)?;
        build(&out)?;
        let seal = Seal::of(&out)?;
        fs::write(out.join(SEAL), serde_json::to_vec_pretty(&seal)?)?;
        let record = serde_json::to_vec_pretty(inputs.items())?;
        fs::write(out.join(INPUTS_RECORD), &record)?;
        fs::rename(&out, &dest).with_context(|| format!("move entry into {}", dest.display()))?;
        write_atomic(&step_dir.join("last.json"), &record)?;
        Ok(Entry {
            dir: dest,
            step: inputs.step().to_string(),
            key: inputs.key(),
            hit: false,
            seal,
        })
    }

    /// A verified download: `inputs/<sha256>/<file>`, re-hashed on every
    /// use; a stored file that no longer has its digest is removed.
    pub fn stored_input(&self, sha256: &str) -> Option<PathBuf> {
        let dir = self.root.join("inputs").join(sha256);
        let file = fs::read_dir(&dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.is_file())?;
        if hash::file_sha256(&file).ok().as_deref() == Some(sha256) {
            return Some(file);
        }
        let _ = remove_tree(&dir);
        None
    }

    /// Stores a file whose sha256 the caller verified as `sha256`; returns
    /// its place in the cache.
    pub fn store_input(&self, file: &Path, sha256: &str) -> Result<PathBuf> {
        let dir = self.root.join("inputs").join(sha256);
        let staging = self.temp_dir("store")?;
        let dest_name = file.file_name().context("a file name")?;
        fs::rename(file, staging.path().join(dest_name))?;
        fs::create_dir_all(dir.parent().expect("parent"))?;
        if let Err(e) = fs::rename(staging.path(), &dir) {
            // A concurrent run stored the same verified file first: same
            // digest, same content, so theirs serves.
            if !dir.join(dest_name).is_file() {
                return Err(e).with_context(|| format!("store {}", dir.display()));
            }
        } else {
            let _ = staging.keep();
        }
        Ok(dir.join(dest_name))
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

/// Where the cache rooted at `root` keeps the entry of `step` with `key`
/// (for tests that compare two caches).
pub fn entry_dir_in(root: &Path, step: &str, key: &str) -> PathBuf {
    root.join("steps").join(step).join(key)
}

/// Where the cache rooted at `root` keeps a record the tests made about a
/// key (`verified/<kind>/<key>.json`; e.g. that a kernel key rebuilt
/// identically elsewhere).
pub fn record_path(root: &Path, kind: &str, key: &str) -> PathBuf {
    root.join("verified").join(kind).join(format!("{key}.json"))
}

/// Copies a verified entry, seal included, into the cache rooted at `root`
/// (which then verifies it like any other).
pub fn copy_entry_to(entry: &Entry, root: &Path) -> Result<()> {
    let dest = entry_dir_in(root, &entry.step, &entry.key);
    for file in files_below(&entry.dir)? {
        let rel = file.strip_prefix(&entry.dir).expect("below the entry");
        let to = dest.join(rel);
        fs::create_dir_all(to.parent().expect("in a dir"))?;
        fs::copy(&file, &to)
            .with_context(|| format!("copy {} to {}", file.display(), to.display()))?;
    }
    Ok(())
}

/// Removes every entry of `step` from the cache rooted at `root`.
pub fn remove_step_entries(root: &Path, step: &str) -> Result<()> {
    let dir = root.join("steps").join(step);
    if dir.exists() {
        remove_tree(&dir)?;
    }
    Ok(())
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
            .build(&inputs, &quiet(), |out| {
                runs += 1;
                fs::write(out.join("result"), b"42")?;
                Ok(())
            })
            .unwrap();
        assert!(!first.hit);
        let second = cache
            .build(&inputs, &quiet(), |_| panic!("must not run on a hit"))
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
            .build(&inputs, &quiet(), |out| {
                fs::write(out.join("half"), b"partial")?;
                bail!("boom")
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert!(matches!(cache.lookup(&inputs), Lookup::Miss));
        assert_eq!(
            fs::read_dir(&cache.work).unwrap().count(),
            0,
            "the failed work dir is gone"
        );
        // and a later successful run creates it
        cache
            .build(&inputs, &quiet(), |out| Ok(fs::write(out.join("ok"), b"")?))
            .unwrap();
        assert!(matches!(cache.lookup(&inputs), Lookup::Hit(_)));
    }

    /// Ages a dir past [`SWEEP_MIN_AGE`].
    fn age(path: &Path) {
        let old = std::time::SystemTime::now() - SWEEP_MIN_AGE * 2;
        File::open(path).unwrap().set_modified(old).unwrap();
    }

    #[test]
    fn debris_of_a_crashed_run_is_swept_but_live_runs_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let live = Cache::open(d.path(), &quiet()).unwrap();
        age(&live.work);
        // Named after a pid that is alive here (1) and after our own: pids
        // say nothing, the lock decides.
        for name in ["1-crashed", &format!("{}-crashed", std::process::id())] {
            fs::create_dir_all(d.path().join("tmp").join(name).join("out")).unwrap();
            age(&d.path().join("tmp").join(name));
        }
        fs::create_dir_all(d.path().join("tmp/young")).unwrap();
        let _c = Cache::open(d.path(), &quiet()).unwrap();
        assert!(!d.path().join("tmp/1-crashed").exists());
        assert!(!d
            .path()
            .join(format!("tmp/{}-crashed", std::process::id()))
            .exists());
        assert!(live.work.exists(), "another live run's work dir stays");
        assert!(
            d.path().join("tmp/young").exists(),
            "a dir its creator may not have locked yet stays"
        );
        drop(live);
    }

    /// A run in another process (this test binary, re-run as a child that
    /// opens a cache and waits) keeps its work dir, whatever its pid, and
    /// loses it once it is killed.
    #[test]
    fn a_killed_process_s_work_dir_is_swept_and_a_live_one_s_is_not() {
        const CHILD: &str = "KATA_XTASK_TEST_HOLD_CACHE";
        if let Some(root) = std::env::var_os(CHILD) {
            let c = Cache::open(Path::new(&root), &quiet()).unwrap();
            age(&c.work);
            println!("ready");
            std::thread::sleep(std::time::Duration::from_secs(60));
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "cache::tests::a_killed_process_s_work_dir_is_swept_and_a_live_one_s_is_not",
                "--nocapture",
            ])
            .env(CHILD, d.path())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        while !line.contains("ready") {
            line.clear();
            assert!(std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0);
        }
        let dirs = |d: &Path| fs::read_dir(d.join("tmp")).unwrap().count();
        let _mine = Cache::open(d.path(), &quiet()).unwrap();
        assert_eq!(dirs(d.path()), 2, "the live child's dir stays");
        child.kill().unwrap();
        child.wait().unwrap();
        let _again = Cache::open(d.path(), &quiet()).unwrap();
        assert_eq!(
            dirs(d.path()),
            2,
            "the killed child's dir is gone, ours stay"
        );
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
                        .build(&inputs, &quiet(), |out| {
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
