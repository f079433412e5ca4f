//! `cargo xtask test repro`: this checkout's release and a release built
//! the way a user builds one in a fresh clone with empty caches, in another
//! directory, must give byte-identical `SHA256SUMS`.
//!
//! The first build is this checkout's own `release` (its cache entries were
//! each built from scratch once, by whichever run first needed them). The
//! second is a [`CleanClone`]: a copy of the sources (the files git tracks
//! or would track, as they are on disk, so uncommitted edits are tested
//! too) with its own empty cache, dist and cargo target dirs, running
//! `cargo xtask release` there. It differs from this checkout in everything
//! a build could leak: the path and its depth, cache, dist and target dirs,
//! umask, time zone and locale. Letting this checkout be one of the two
//! builds saves a whole release per run without weakening the claim: two
//! independent builds are compared either way.
//!
//! The kernel is the one exception to "empty caches", because rebuilding an
//! unchanged kernel costs 5 to 12 minutes per run. The clone builds the
//! kernel from empty unless a [`KernelRebuilt`] record for that kernel's key
//! proves that a from-scratch build in another directory gave the same
//! bytes. A record is written to the main cache only after such a rebuild
//! matched; a record kept with the sources (`ci/kernel-rebuilt/<key>.json`)
//! serves a machine whose cache is new, and there this checkout's kernel,
//! itself built from scratch, must match the recorded digests, which is the
//! same proof made again. A changed kernel (a new key) is rebuilt and
//! compared once. `--rebuild-kernel` ignores every record.
//!
//! `bench release` (bench_release.rs) times two clones.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use xtask::context::{Ctx, CACHE_ENV, DIST_ENV};
use xtask::hash::file_sha256;
use xtask::kernel::{KernelArgs, KernelBuild};

#[derive(Args, Clone, Default)]
pub struct ReproArgs {
    /// Keep the two clones (with their caches and dists) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Rebuild the kernel in clone B even if this kernel was already proven
    /// to rebuild identically.
    #[arg(long)]
    pub rebuild_kernel: bool,
}

/// The host settings one clone builds under.
#[derive(Clone, Copy)]
pub struct Variant {
    pub umask: libc::mode_t,
    pub tz: &'static str,
    pub lang: &'static str,
}

/// Two deliberately different build environments.
pub const VARIANT_A: Variant = Variant {
    umask: 0o022,
    tz: "UTC",
    lang: "C.UTF-8",
};
pub const VARIANT_B: Variant = Variant {
    umask: 0o027,
    tz: "Pacific/Chatham",
    lang: "C",
};

/// The kernel files a build produces (the entry's sidecars are not compared).
const KERNEL_FILES: [&str; 5] = ["bzImage", "vmlinux", "config", "System.map", "release"];

/// A copy of the sources with its own empty cache, dist and target dirs.
pub struct CleanClone {
    pub name: String,
    pub root: PathBuf,
    pub cache: PathBuf,
    pub dist: PathBuf,
    pub log: PathBuf,
    variant: Variant,
}

impl CleanClone {
    /// Copies the sources of `ctx.root` (tracked or untracked, never ignored) to `root`.
    pub fn create(
        ctx: &Ctx,
        name: &str,
        root: &Path,
        state: &Path,
        variant: Variant,
    ) -> Result<CleanClone> {
        let listed = Command::new("git")
            .args([
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ])
            .current_dir(&ctx.root)
            .stderr(Stdio::piped())
            .output()
            .context("cannot run git")?;
        if !listed.status.success() {
            bail!(
                "{} is not a git checkout ({}); the clean clones copy the files git lists",
                ctx.root.display(),
                String::from_utf8_lossy(&listed.stderr).trim()
            );
        }
        let mut copied = 0usize;
        for rel in listed.stdout.split(|b| *b == 0).filter(|r| !r.is_empty()) {
            let rel = Path::new(std::str::from_utf8(rel).context("a tracked path is not UTF-8")?);
            let from = ctx.root.join(rel);
            let meta = match std::fs::symlink_metadata(&from) {
                Ok(m) => m,
                // Deleted in the working tree but not yet in the index.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e).with_context(|| format!("read {}", from.display())),
            };
            let to = root.join(rel);
            std::fs::create_dir_all(to.parent().expect("a file has a parent"))?;
            if meta.file_type().is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(&from)?, &to)?;
            } else {
                // Copies the mode too (scripts stay executable).
                std::fs::copy(&from, &to)
                    .with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
            }
            copied += 1;
        }
        if copied == 0 {
            bail!("git lists no source files in {}", ctx.root.display());
        }
        let log = ctx.logs().join(format!("repro-{name}.log"));
        xtask::tools::fresh_log(&log)?;
        Ok(CleanClone {
            name: name.to_string(),
            root: root.to_path_buf(),
            cache: state.join("cache"),
            dist: state.join("dist"),
            log,
            variant,
        })
    }

    /// Clone "b" below `base`: a deep path of other names than this
    /// checkout's, built under [`VARIANT_B`].
    pub fn create_b(ctx: &Ctx, base: &Path) -> Result<CleanClone> {
        CleanClone::create(
            ctx,
            "b",
            &base.join("b/home/builder/src/kata-osbuilder-rs"),
            &base.join("b/var/lib/build-state"),
            VARIANT_B,
        )
    }

    /// Puts a copy of the main cache's kernel entry into this clone's cache.
    pub fn seed_kernel(&self, kernel: &KernelBuild) -> Result<()> {
        xtask::cache::copy_entry_to(&kernel.entry, &self.cache)
    }

    /// A `cargo` command in the clone, with the variant's umask, TZ and
    /// locale and none of the caller's cache or target overrides.
    fn cargo(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.args(args)
            .current_dir(&self.root)
            .env_remove(CACHE_ENV)
            .env_remove(DIST_ENV)
            .env_remove("CARGO_TARGET_DIR")
            .env("TZ", self.variant.tz)
            .env("LANG", self.variant.lang)
            .env("LC_ALL", self.variant.lang);
        let umask = self.variant.umask;
        // SAFETY: umask(2) is async-signal-safe and touches only the child.
        unsafe {
            cmd.pre_exec(move || {
                libc::umask(umask);
                Ok(())
            });
        }
        cmd
    }

    /// Builds the clone's own xtask, so that [`CleanClone::release`] times
    /// the release and not the compiler building the tool.
    pub fn build_xtask(&self) -> Result<()> {
        xtask::tools::run_logged(
            &mut self.cargo(&["build", "--locked", "--quiet", "--package", "xtask"]),
            &self.log,
        )
    }

    /// `cargo xtask release` in the clone; returns the wall time.
    pub fn release(&self) -> Result<Duration> {
        let cache = self.cache.display().to_string();
        let dist = self.dist.display().to_string();
        let start = Instant::now();
        xtask::tools::run_logged(
            &mut self.cargo(&[
                "xtask",
                "release",
                "--cache-dir",
                &cache,
                "--dist-dir",
                &dist,
            ]),
            &self.log,
        )
        .with_context(|| format!("release in clone {} ({})", self.name, self.root.display()))?;
        Ok(start.elapsed())
    }

    pub fn sums(&self) -> Result<String> {
        sums_in(&self.dist)
    }

    fn kernel_entry(&self, key: &str) -> PathBuf {
        xtask::cache::entry_dir_in(&self.cache, "kernel", key)
    }
}

/// The main cache's record that a kernel key rebuilt from empty, in another
/// directory, gave the same files.
#[derive(Serialize, Deserialize)]
pub struct KernelRebuilt {
    pub key: String,
    /// Unix time of the comparison.
    pub compared_at: u64,
    pub rebuilt_in: String,
    pub sha256: BTreeMap<String, String>,
}

impl KernelRebuilt {
    fn path(ctx: &Ctx, key: &str) -> PathBuf {
        xtask::cache::record_path(&ctx.cache_dir, "kernel-rebuilt", key)
    }

    /// The record kept with the sources, for a machine whose cache is new.
    pub fn committed_path(ctx: &Ctx, key: &str) -> PathBuf {
        ctx.root
            .join("ci")
            .join("kernel-rebuilt")
            .join(format!("{key}.json"))
    }

    fn read(path: &Path, key: &str) -> Option<KernelRebuilt> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice::<KernelRebuilt>(&bytes)
            .ok()
            .filter(|r| r.key == key)
    }

    /// A record for `main`'s key, from the main cache or kept with the
    /// sources, whose digests `main`'s own files match. A record that
    /// `main` does not match is an error: two builds of one key differ.
    pub fn find(ctx: &Ctx, main: &KernelBuild) -> Result<Option<KernelRebuilt>> {
        let candidates = [
            Self::path(ctx, &main.key),
            Self::committed_path(ctx, &main.key),
        ];
        let Some((path, record)) = candidates
            .iter()
            .find_map(|p| Self::read(p, &main.key).map(|r| (p.clone(), r)))
        else {
            return Ok(None);
        };
        let mut differ = Vec::new();
        for f in KERNEL_FILES {
            let have = file_sha256(&main.dir.join(f))?;
            match record.sha256.get(f) {
                Some(want) if *want == have => {}
                Some(want) => differ.push(format!(
                    "{f} ({} recorded, {} built)",
                    &want[..12],
                    &have[..12]
                )),
                None => differ.push(format!("{f} (not in the record)")),
            }
        }
        if !differ.is_empty() {
            bail!(
                "kernel {} in {} differs from the build recorded in {} (rebuilt in {}): {}; \
                 rerun with --rebuild-kernel to compare two fresh builds",
                &main.key[..12],
                main.dir.display(),
                ctx.rel(&path),
                record.rebuilt_in,
                differ.join(", ")
            );
        }
        Ok(Some(record))
    }

    /// Compares a clone's from-scratch kernel with the main cache's entry
    /// and, when every file matches, records it.
    pub fn compare_and_record(
        ctx: &Ctx,
        main: &KernelBuild,
        clone: &CleanClone,
    ) -> Result<KernelRebuilt> {
        let rebuilt = clone.kernel_entry(&main.key);
        let mut sha256 = BTreeMap::new();
        let mut differ = Vec::new();
        for f in KERNEL_FILES {
            let a = file_sha256(&main.dir.join(f))?;
            let b = file_sha256(&rebuilt.join(f))
                .with_context(|| format!("clone {} built no kernel {f}", clone.name))?;
            if a != b {
                differ.push(format!("{f} ({} vs {})", &a[..12], &b[..12]));
            }
            sha256.insert(f.to_string(), a);
        }
        if !differ.is_empty() {
            bail!(
                "the kernel rebuilt from empty in {} differs from the cached one {}: {}",
                clone.root.display(),
                main.dir.display(),
                differ.join(", ")
            );
        }
        let record = KernelRebuilt {
            key: main.key.clone(),
            compared_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs(),
            rebuilt_in: clone.root.display().to_string(),
            sha256,
        };
        xtask::cache::write_atomic(
            &Self::path(ctx, &main.key),
            &serde_json::to_vec_pretty(&record)?,
        )?;
        Ok(record)
    }
}

/// Two clones under one temp dir, at paths of different names and depths
/// (`bench release` times them).
pub struct ClonePair {
    /// Removed with the pair.
    _base: tempfile::TempDir,
    pub a: CleanClone,
    pub b: CleanClone,
}

impl ClonePair {
    pub fn create(ctx: &Ctx) -> Result<ClonePair> {
        let base = tempfile::Builder::new().prefix("kata-repro-").tempdir()?;
        let step = ctx.ui.step("copy the sources into two clean clones");
        let a = CleanClone::create(
            ctx,
            "a",
            &base.path().join("a/kata-containers"),
            &base.path().join("a/state"),
            VARIANT_A,
        )?;
        let b = CleanClone::create_b(ctx, base.path())?;
        step.finish(&format!("{} and {}", a.root.display(), b.root.display()));
        for c in [&a, &b] {
            let step = ctx.ui.step(&format!(
                "clone {}: cargo build -p xtask (log {})",
                c.name,
                ctx.rel(&c.log)
            ));
            c.build_xtask()?;
            step.finish("built");
        }
        Ok(ClonePair { _base: base, a, b })
    }

    /// Runs one clone's release with progress; returns its wall time.
    pub fn release(ctx: &Ctx, c: &CleanClone, what: &str) -> Result<Duration> {
        let step = ctx.ui.step(&format!(
            "clone {}: cargo xtask release, {what} (log {})",
            c.name,
            ctx.rel(&c.log)
        ));
        let took = c.release()?;
        step.finish("released");
        Ok(took)
    }
}

/// A SHA256SUMS text as file name -> digest.
pub fn sums_by_name(sums: &str) -> BTreeMap<String, String> {
    sums.lines()
        .filter_map(|l| l.split_once("  "))
        .map(|(sum, name)| (name.trim_start_matches('*').to_string(), sum.to_string()))
        .collect()
}

/// Lines of `a` and `b` (two SHA256SUMS) that differ, as "file: a vs b".
pub fn differing_sums(a: &str, b: &str) -> Vec<String> {
    let (pa, pb) = (sums_by_name(a), sums_by_name(b));
    let names: std::collections::BTreeSet<&String> = pa.keys().chain(pb.keys()).collect();
    names
        .into_iter()
        .filter(|n| pa.get(*n) != pb.get(*n))
        .map(|n| {
            let show = |m: &BTreeMap<String, String>| {
                m.get(n)
                    .map(|s| s[..12.min(s.len())].to_string())
                    .unwrap_or_else(|| "missing".into())
            };
            format!("{n}: {} vs {}", show(&pa), show(&pb))
        })
        .collect()
}

/// The tarball members whose content differs between the two clones' dists
/// (unpacked with GNU tar), for the error message.
fn differing_members(a: &Path, b: &Path, tarball: &str) -> Result<Vec<String>> {
    let scratch = tempfile::Builder::new()
        .prefix("kata-repro-unpacked-")
        .tempdir()?;
    let unpack = |dist: &Path, name: &str| -> Result<PathBuf> {
        let dir = scratch.path().join(name);
        std::fs::create_dir_all(&dir)?;
        xtask::tools::run_captured(
            Command::new("tar")
                .arg("--zstd")
                .arg("-xf")
                .arg(dist.join(tarball))
                .arg("-C")
                .arg(&dir),
        )?;
        Ok(dir)
    };
    let (da, db) = (unpack(a, "a")?, unpack(b, "b")?);
    let mut differ = Vec::new();
    for e in xtask::cache::files_below(&da)? {
        let rel = e.strip_prefix(&da)?;
        let other = db.join(rel);
        let same = match (
            std::fs::symlink_metadata(&e),
            std::fs::symlink_metadata(&other),
        ) {
            (Ok(m), Ok(n)) if m.is_file() && n.is_file() => {
                file_sha256(&e)? == file_sha256(&other)?
            }
            (Ok(m), Ok(n)) => m.file_type() == n.file_type(),
            _ => false,
        };
        if !same {
            differ.push(rel.display().to_string());
        }
    }
    Ok(differ)
}

/// The `SHA256SUMS` of the release in `dist`.
pub fn sums_in(dist: &Path) -> Result<String> {
    let path = dist.join(xtask::release::CHECKSUMS);
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// Fails naming what differs between the releases in two dist dirs.
pub fn compare(ctx: &Ctx, a: &Path, b: &Path) -> Result<String> {
    let (sa, sb) = (sums_in(a)?, sums_in(b)?);
    if sa == sb {
        return Ok(sa);
    }
    let differ = differing_sums(&sa, &sb);
    let tarball = xtask::release::tarball_file_name(ctx)?;
    let members = if differ.iter().any(|d| d.starts_with(&tarball)) {
        match differing_members(a, b, &tarball) {
            Ok(m) if !m.is_empty() => format!("; tarball members that differ: {}", m.join(", ")),
            Ok(_) => "; the tarball members are identical (the archive itself differs)".to_string(),
            Err(e) => format!("; could not compare the tarballs' members: {e:#}"),
        }
    } else {
        String::new()
    };
    bail!(
        "the two clean releases differ: {}{members}",
        differ.join("; ")
    )
}

pub fn test(ctx: &Ctx, args: &ReproArgs) -> Result<()> {
    if ctx.dry_run {
        ctx.ui.info(
            "test repro plan: cargo xtask release here; copy the tracked sources into a clean clone at another path; \
             there, with an empty cache, its own target and dist dirs and a different umask/TZ/locale, cargo xtask release; \
             compare the two SHA256SUMS",
        );
        return Ok(());
    }
    // Build one: this checkout's release.
    xtask::release::build(ctx, &xtask::release::ReleaseArgs::default())?;
    let kernel = xtask::kernel::build(ctx, &KernelArgs::default())?;
    let proven = if args.rebuild_kernel {
        None
    } else {
        KernelRebuilt::find(ctx, &kernel)?
    };
    // Build two: a clean clone.
    let base = tempfile::Builder::new().prefix("kata-repro-").tempdir()?;
    let step = ctx.ui.step("copy the sources into a clean clone");
    let clone = CleanClone::create_b(ctx, base.path())?;
    step.finish(&clone.root.display().to_string());
    let result = (|| -> Result<String> {
        let step = ctx.ui.step(&format!(
            "clone {}: cargo build -p xtask (log {})",
            clone.name,
            ctx.rel(&clone.log)
        ));
        clone.build_xtask()?;
        step.finish("built");
        match &proven {
            Some(p) => {
                clone.seed_kernel(&kernel)?;
                ctx.ui.info(&format!(
                    "test repro: kernel {} was rebuilt from empty in {} with the files built here (unix time {}); the clone takes it from the main cache",
                    &kernel.key[..12],
                    p.rebuilt_in,
                    p.compared_at
                ));
                ClonePair::release(ctx, &clone, "kernel from the main cache")?;
            }
            None => {
                ClonePair::release(ctx, &clone, "everything from empty, the kernel too")?;
            }
        }
        let sums = compare(ctx, &ctx.dist(), &clone.dist)?;
        if proven.is_none() {
            KernelRebuilt::compare_and_record(ctx, &kernel, &clone)?;
            ctx.ui.info(&format!(
                "test repro: kernel {} rebuilt from empty is identical; recorded in the cache (copy it to {} to keep the proof with the sources)",
                &kernel.key[..12],
                ctx.rel(&KernelRebuilt::committed_path(ctx, &kernel.key))
            ));
        }
        Ok(sums)
    })();
    match result {
        Ok(sums) => {
            ctx.ui.info(&format!(
                "test repro: this checkout's release and the clean clone's have the same SHA256SUMS:\n{}",
                sums.trim_end()
            ));
            if args.keep {
                ctx.ui
                    .info(&format!("test repro: kept {}", base.keep().display()));
            }
            Ok(())
        }
        Err(e) => {
            let kept = base.keep();
            Err(e.context(format!(
                "clone kept in {} (log: {})",
                kept.display(),
                ctx.rel(&clone.log)
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::differing_sums;

    #[test]
    fn differing_sums_names_changed_and_missing_files() {
        let a = "aaaaaaaaaaaaaaaa  x.deb\nbbbbbbbbbbbbbbbb  y.rpm\ncccccccccccccccc  z.json\n";
        let b = "aaaaaaaaaaaaaaaa  x.deb\ndddddddddddddddd  y.rpm\n";
        assert_eq!(
            differing_sums(a, b),
            vec![
                "y.rpm: bbbbbbbbbbbb vs dddddddddddd",
                "z.json: cccccccccccc vs missing"
            ]
        );
        assert!(differing_sums(a, a).is_empty());
    }
}
