//! What every command gets: the repository root, the loaded pins, the cache,
//! the global options.

use std::cell::OnceCell;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cache::{Cache, Digests};
use crate::error::InputError;
use crate::ui::Ui;
use crate::versions::{self, Versions};
use crate::GlobalOpts;

pub const CACHE_ENV: &str = "KATA_XTASK_CACHE_DIR";
pub const DIST_ENV: &str = "KATA_XTASK_DIST_DIR";

pub struct Ctx {
    pub root: PathBuf,
    pub versions_path: PathBuf,
    pub versions: Versions,
    /// SOURCE_DATE_EPOCH in force (environment over versions.yaml).
    pub epoch: i64,
    pub cache_dir: PathBuf,
    dist_dir: PathBuf,
    cache: OnceCell<Cache>,
    pub offline: bool,
    pub dry_run: bool,
    pub json: bool,
    pub ui: Ui,
    /// Source digests and tool versions, each computed once per command.
    pub digests: Digests,
    /// `--agent-bin`: a prebuilt agent instead of the `agent` build (absolute).
    pub agent_bin: Option<PathBuf>,
}

/// The workspace root: xtask lives one level below it, unless
/// [`crate::ROOT_ENV`] names another copy of the same sources (`test repro`
/// builds a clean clone with this binary instead of compiling the build
/// tool a second time).
pub fn project_root() -> PathBuf {
    match std::env::var_os(crate::ROOT_ENV).filter(|v| !v.is_empty()) {
        Some(root) => PathBuf::from(root),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask has a parent")
            .to_path_buf(),
    }
}

impl Ctx {
    pub fn new(opts: &GlobalOpts) -> Result<Ctx> {
        let root = project_root();
        if !root.join("xtask").join("Cargo.toml").is_file() {
            anyhow::bail!(
                "{}={}: not a checkout of this project (no xtask/Cargo.toml there); unset it or point it at one",
                crate::ROOT_ENV,
                root.display()
            );
        }
        let versions_path = opts
            .versions
            .clone()
            .unwrap_or_else(|| versions::default_path(&root));
        let versions = Versions::load(&versions_path)?;
        let epoch = versions.effective_epoch()?;
        let cache_dir = match (&opts.cache_dir, std::env::var_os(CACHE_ENV)) {
            (Some(dir), _) => dir.clone(),
            (None, Some(dir)) if !dir.is_empty() => PathBuf::from(dir),
            _ => root.join("target").join("cache"),
        };
        let cwd = std::env::current_dir()?;
        let cache_dir = cwd.join(cache_dir);
        let dist_dir = match (&opts.dist_dir, std::env::var_os(DIST_ENV)) {
            (Some(dir), _) => cwd.join(dir),
            (None, Some(dir)) if !dir.is_empty() => cwd.join(dir),
            _ => root.join("target").join("dist"),
        };
        Ok(Ctx {
            root,
            versions_path,
            versions,
            epoch,
            cache_dir,
            dist_dir,
            cache: OnceCell::new(),
            offline: opts.offline,
            dry_run: opts.dry_run,
            json: opts.json,
            ui: Ui::new(opts.verbose),
            digests: Digests::default(),
            agent_bin: opts.agent_bin.as_ref().map(|f| cwd.join(f)),
        })
    }

    /// A quiet context on this checkout's pins with its own cache dir.
    #[cfg(test)]
    pub fn for_tests(cache_dir: &Path) -> Ctx {
        let root = project_root();
        let versions_path = versions::default_path(&root);
        let versions = Versions::load(&versions_path).expect("the checkout's versions.yaml loads");
        Ctx {
            epoch: versions.effective_epoch().expect("a valid epoch"),
            root: root.clone(),
            versions_path,
            versions,
            cache_dir: cache_dir.to_path_buf(),
            dist_dir: cache_dir.join("dist"),
            cache: OnceCell::new(),
            offline: true,
            dry_run: false,
            json: false,
            ui: Ui::quiet(),
            agent_bin: None,
            digests: Digests::default(),
        }
    }

    /// The cache, opened (and locked) on first use so that commands which
    /// need none (`versions`, `doctor`) never wait on a lock.
    pub fn cache(&self) -> Result<&Cache> {
        if let Some(c) = self.cache.get() {
            return Ok(c);
        }
        let c = Cache::open(&self.cache_dir, &self.ui).map_err(|e| {
            anyhow::Error::new(InputError::new(format!(
                "--cache-dir {}: {e:#}; choose a writable dir with --cache-dir or {CACHE_ENV}",
                self.cache_dir.display()
            )))
        })?;
        Ok(self.cache.get_or_init(|| c))
    }

    pub fn dist(&self) -> PathBuf {
        self.dist_dir.clone()
    }

    /// Fails fast, before any work, when artifacts could not be written.
    pub fn ensure_dist_writable(&self) -> Result<()> {
        let dist = self.dist();
        let probe = std::fs::create_dir_all(&dist).and_then(|_| {
            tempfile::Builder::new()
                .prefix(".probe")
                .tempfile_in(&dist)
                .map(drop)
        });
        probe.map_err(|e| {
            anyhow::Error::new(InputError::new(format!(
                "output dir {} is not writable ({e}); pass a writable one with --dist-dir or {DIST_ENV}",
                dist.display()
            )))
        })
    }

    /// `target/logs`, created if missing: QEMU opens console logs there
    /// itself and fails on a missing directory, which a fresh clone whose
    /// steps are all cached (so none wrote a log yet) does not have.
    pub fn logs(&self) -> PathBuf {
        let dir = self.root.join("target").join("logs");
        if let Err(e) = std::fs::create_dir_all(&dir) {
            self.ui
                .info(&format!("warning: cannot create {}: {e}", dir.display()));
        }
        dir
    }

    pub fn recipes_dir(&self) -> PathBuf {
        self.root.join("image-recipes")
    }

    /// A path as the manifest records it: relative to the repository root.
    pub fn rel(&self, path: &Path) -> String {
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .to_string_lossy()
            .into_owned()
    }

    pub fn print_json(&self, value: &serde_json::Value) -> Result<()> {
        println!("{}", serde_json::to_string(value).context("encode JSON")?);
        Ok(())
    }

    pub fn fetcher(&self) -> Result<crate::fetch::Fetcher<'_>> {
        Ok(crate::fetch::Fetcher {
            cache: self.cache()?,
            ui: &self.ui,
            offline: self.offline,
        })
    }
}
