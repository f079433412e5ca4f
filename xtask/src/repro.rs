//! `cargo xtask test repro`: two releases, each built the way a user builds
//! one in a fresh clone with empty caches, in two different directories,
//! must give byte-identical `SHA256SUMS`.
//!
//! Each [`CleanClone`] is a copy of this checkout's sources: the files git
//! tracks or would track (not ignored), as they are on disk, so uncommitted
//! edits are tested too with its own empty cache,
//! dist dir and cargo target dirs, and runs `cargo xtask release` there. The
//! two differ in everything a build could leak: the clone's path and depth,
//! cache, dist and target dirs, umask, time zone and locale.
//!
//! The kernel is the one exception to "empty caches", because rebuilding an
//! unchanged kernel twice per CI run would cost about 25 minutes. Clone A
//! gets the kernel entry of the main cache. Clone B builds the kernel from
//! empty unless the main cache holds a [`KernelRebuilt`] record for that
//! kernel's key: the proof that a from-scratch build in another directory
//! gave the same bytes. That record is written here, only after such a
//! rebuild matched, so a changed kernel (a new key) is rebuilt and compared
//! once, then trusted for as long as its inputs stay the same.
//! `--rebuild-kernel` ignores the record.
//!
//! `bench release` (bench_release.rs) times the same clones.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::context::{Ctx, CACHE_ENV, DIST_ENV};
use crate::hash::file_sha256;
use crate::kernel::{KernelArgs, KernelBuild};

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
pub const VARIANT_A: Variant = Variant { umask: 0o022, tz: "UTC", lang: "C.UTF-8" };
pub const VARIANT_B: Variant = Variant { umask: 0o027, tz: "Pacific/Chatham", lang: "C" };

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
    pub fn create(ctx: &Ctx, name: &str, root: &Path, state: &Path, variant: Variant) -> Result<CleanClone> {
        let listed = Command::new("git")
            .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
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
                std::fs::copy(&from, &to).with_context(|| format!("copy {} to {}", from.display(), to.display()))?;
            }
            copied += 1;
        }
        if copied == 0 {
            bail!("git lists no source files in {}", ctx.root.display());
        }
        let log = ctx.logs().join(format!("repro-{name}.log"));
        crate::tools::fresh_log(&log)?;
        Ok(CleanClone {
            name: name.to_string(),
            root: root.to_path_buf(),
            cache: state.join("cache"),
            dist: state.join("dist"),
            log,
            variant,
        })
    }

    /// Puts a copy of the main cache's kernel entry into this clone's cache.
    pub fn seed_kernel(&self, kernel: &KernelBuild) -> Result<()> {
        let dest = self.cache.join("steps").join("kernel").join(&kernel.key);
        std::fs::create_dir_all(&dest)?;
        for e in std::fs::read_dir(&kernel.dir)? {
            let e = e?;
            std::fs::copy(e.path(), dest.join(e.file_name()))?;
        }
        Ok(())
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
        crate::tools::run_logged(&mut self.cargo(&["build", "--locked", "--quiet", "--package", "xtask"]), &self.log)
    }

    /// `cargo xtask release` in the clone; returns the wall time.
    pub fn release(&self) -> Result<Duration> {
        let cache = self.cache.display().to_string();
        let dist = self.dist.display().to_string();
        let start = Instant::now();
        crate::tools::run_logged(
            &mut self.cargo(&["xtask", "release", "--cache-dir", &cache, "--dist-dir", &dist]),
            &self.log,
        )
        .with_context(|| format!("release in clone {} ({})", self.name, self.root.display()))?;
        Ok(start.elapsed())
    }

    pub fn sums(&self) -> Result<String> {
        let path = self.dist.join(crate::release::CHECKSUMS);
        std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
    }

    fn kernel_entry(&self, key: &str) -> PathBuf {
        self.cache.join("steps").join("kernel").join(key)
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
        ctx.cache_dir.join("verified").join("kernel-rebuilt").join(format!("{key}.json"))
    }

    pub fn load(ctx: &Ctx, key: &str) -> Option<KernelRebuilt> {
        let bytes = std::fs::read(Self::path(ctx, key)).ok()?;
        serde_json::from_slice::<KernelRebuilt>(&bytes).ok().filter(|r| r.key == key)
    }

    /// Compares a clone's from-scratch kernel with the main cache's entry
    /// and, when every file matches, records it.
    pub fn compare_and_record(ctx: &Ctx, main: &KernelBuild, clone: &CleanClone) -> Result<KernelRebuilt> {
        let rebuilt = clone.kernel_entry(&main.key);
        let mut sha256 = BTreeMap::new();
        let mut differ = Vec::new();
        for f in KERNEL_FILES {
            let a = file_sha256(&main.dir.join(f))?;
            let b = file_sha256(&rebuilt.join(f)).with_context(|| format!("clone {} built no kernel {f}", clone.name))?;
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
            compared_at: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs(),
            rebuilt_in: clone.root.display().to_string(),
            sha256,
        };
        crate::cache::write_atomic(&Self::path(ctx, &main.key), &serde_json::to_vec_pretty(&record)?)?;
        Ok(record)
    }
}

/// The two clones under one temp dir, at paths of different names and depths.
pub struct ClonePair {
    pub base: tempfile::TempDir,
    pub a: CleanClone,
    pub b: CleanClone,
}

impl ClonePair {
    pub fn create(ctx: &Ctx) -> Result<ClonePair> {
        let base = tempfile::Builder::new().prefix("kata-repro-").tempdir()?;
        let step = ctx.ui.step("copy the sources into two clean clones");
        let a = CleanClone::create(ctx, "a", &base.path().join("a/kata-containers"), &base.path().join("a/state"), VARIANT_A)?;
        let b = CleanClone::create(
            ctx,
            "b",
            &base.path().join("b/home/builder/src/kata-osbuilder-rs"),
            &base.path().join("b/var/lib/build-state"),
            VARIANT_B,
        )?;
        step.finish(&format!("{} and {}", a.root.display(), b.root.display()));
        for c in [&a, &b] {
            let step = ctx.ui.step(&format!("clone {}: cargo build -p xtask (log {})", c.name, ctx.rel(&c.log)));
            c.build_xtask()?;
            step.finish("built");
        }
        Ok(ClonePair { base, a, b })
    }

    /// Runs one clone's release with progress; returns its wall time.
    pub fn release(ctx: &Ctx, c: &CleanClone, what: &str) -> Result<Duration> {
        let step = ctx.ui.step(&format!("clone {}: cargo xtask release, {what} (log {})", c.name, ctx.rel(&c.log)));
        let took = c.release()?;
        step.finish("released");
        Ok(took)
    }

    /// Keeps the clones on disk (for `--keep` or a failure to look at).
    pub fn keep(self) -> PathBuf {
        self.base.keep()
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
            let show = |m: &BTreeMap<String, String>| m.get(n).map(|s| s[..12.min(s.len())].to_string()).unwrap_or_else(|| "missing".into());
            format!("{n}: {} vs {}", show(&pa), show(&pb))
        })
        .collect()
}

/// The tarball members whose content differs between the two clones' dists
/// (unpacked with GNU tar), for the error message.
fn differing_members(a: &CleanClone, b: &CleanClone, tarball: &str) -> Result<Vec<String>> {
    let unpack = |c: &CleanClone| -> Result<PathBuf> {
        let dir = c.dist.with_extension("unpacked");
        std::fs::create_dir_all(&dir)?;
        crate::tools::run_captured(Command::new("tar").arg("--zstd").arg("-xf").arg(c.dist.join(tarball)).arg("-C").arg(&dir))?;
        Ok(dir)
    };
    let (da, db) = (unpack(a)?, unpack(b)?);
    let mut differ = Vec::new();
    for e in crate::cache::files_below(&da)? {
        let rel = e.strip_prefix(&da)?;
        let other = db.join(rel);
        let same = match (std::fs::symlink_metadata(&e), std::fs::symlink_metadata(&other)) {
            (Ok(m), Ok(n)) if m.is_file() && n.is_file() => file_sha256(&e)? == file_sha256(&other)?,
            (Ok(m), Ok(n)) => m.file_type() == n.file_type(),
            _ => false,
        };
        if !same {
            differ.push(rel.display().to_string());
        }
    }
    Ok(differ)
}

/// Fails naming what differs between the two clones' releases.
pub fn compare(ctx: &Ctx, a: &CleanClone, b: &CleanClone) -> Result<String> {
    let (sa, sb) = (a.sums()?, b.sums()?);
    if sa == sb {
        return Ok(sa);
    }
    let differ = differing_sums(&sa, &sb);
    let tarball = crate::release::tarball_file_name(ctx)?;
    let members = if differ.iter().any(|d| d.starts_with(&tarball)) {
        match differing_members(a, b, &tarball) {
            Ok(m) if !m.is_empty() => format!("; tarball members that differ: {}", m.join(", ")),
            Ok(_) => "; the tarball members are identical (the archive itself differs)".to_string(),
            Err(e) => format!("; could not compare the tarballs' members: {e:#}"),
        }
    } else {
        String::new()
    };
    bail!("the two clean releases differ: {}{members}", differ.join("; "))
}

pub fn test(ctx: &Ctx, args: &ReproArgs) -> Result<()> {
    if ctx.dry_run {
        ctx.ui.info(
            "test repro plan: copy the tracked sources into two clones at different paths; in each, with an empty cache, \
             its own target and dist dirs and a different umask/TZ/locale, cargo xtask release; compare SHA256SUMS",
        );
        return Ok(());
    }
    let kernel = crate::kernel::build(ctx, &KernelArgs::default())?;
    let proven = if args.rebuild_kernel { None } else { KernelRebuilt::load(ctx, &kernel.key) };
    let pair = ClonePair::create(ctx)?;
    let result = (|| -> Result<String> {
        pair.a.seed_kernel(&kernel)?;
        ClonePair::release(ctx, &pair.a, "kernel from the main cache")?;
        match &proven {
            Some(p) => {
                pair.b.seed_kernel(&kernel)?;
                ctx.ui.info(&format!(
                    "test repro: kernel {} was rebuilt from empty in {} with identical files (unix time {}); clone b takes it from the main cache",
                    &kernel.key[..12],
                    p.rebuilt_in,
                    p.compared_at
                ));
                ClonePair::release(ctx, &pair.b, "kernel from the main cache")?;
            }
            None => {
                ClonePair::release(ctx, &pair.b, "everything from empty, the kernel too")?;
            }
        }
        let sums = compare(ctx, &pair.a, &pair.b)?;
        if proven.is_none() {
            KernelRebuilt::compare_and_record(ctx, &kernel, &pair.b)?;
            ctx.ui.info(&format!("test repro: kernel {} rebuilt from empty is identical; recorded", &kernel.key[..12]));
        }
        Ok(sums)
    })();
    match result {
        Ok(sums) => {
            ctx.ui.info(&format!("test repro: both clean releases have the same SHA256SUMS:\n{}", sums.trim_end()));
            if args.keep {
                ctx.ui.info(&format!("test repro: kept {}", pair.keep().display()));
            }
            Ok(())
        }
        Err(e) => {
            let kept = pair.keep();
            Err(e.context(format!("clones kept in {} (logs: {})", kept.display(), ctx.rel(&ctx.logs().join("repro-*.log")))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differing_sums_names_changed_and_missing_files() {
        let a = "aaaaaaaaaaaaaaaa  x.deb\nbbbbbbbbbbbbbbbb  y.rpm\ncccccccccccccccc  z.json\n";
        let b = "aaaaaaaaaaaaaaaa  x.deb\ndddddddddddddddd  y.rpm\n";
        assert_eq!(differing_sums(a, b), vec!["y.rpm: bbbbbbbbbbbb vs dddddddddddd", "z.json: cccccccccccc vs missing"]);
        assert!(differing_sums(a, a).is_empty());
    }
}
