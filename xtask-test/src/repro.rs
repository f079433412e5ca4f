//! `cargo xtask test repro`: this checkout's release and a release built
//! the way a user builds one in a fresh clone with empty caches, in another
//! directory, must give byte-identical `SHA256SUMS`; so must the debian
//! guest's dm-verity image, which the release leaves out.
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
//! The kernel and the pinned vsock daemon are the exceptions to "empty
//! caches" ([`SharedStep`]), because rebuilding them unchanged costs 10 to
//! 15 and about 2 minutes per run. The clone builds such a step from empty
//! unless a [`Rebuilt`] record for its key proves that a from-scratch
//! build in another directory gave the same bytes. A record is written to
//! the main cache only after such a rebuild matched; a record kept with the
//! sources (`ci/<step>-rebuilt/<key>.json`) serves a machine whose cache is
//! new, and there this checkout's build, itself made from scratch, must
//! match the recorded digests, which is the same proof made again. A
//! changed kernel or pin (a new key) is rebuilt and compared once.
//! `--rebuild-shared` ignores every record.
//!
//! The clone runs this checkout's pipeline binary (`KATA_XTASK_ROOT` points
//! it at the clone) instead of compiling its own: the build tool is built
//! from the same sources, and like rustc it is an input the two builds
//! share; every artifact it makes (agent, runtime, images, packages) is
//! still built from empty in the clone, by cargo in the clone's own target
//! dirs. That saves the tool's 3 to 5 minute debug build per run.
//!
//! `bench release` (bench_release.rs) times two clones, each building its
//! own xtask first as a user's `cargo xtask` would.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use xtask::context::{Ctx, CACHE_ENV, DIST_ENV};
use xtask::graph::StepTiming;
use xtask::hash::file_sha256;
use xtask::kernel::{KernelArgs, KernelBuild};

#[derive(Args, Clone, Default)]
pub struct ReproArgs {
    /// Keep the two clones (with their caches and dists) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Rebuild the kernel and the vsock daemon in the clone even if their
    /// keys were already proven to rebuild identically.
    #[arg(long)]
    pub rebuild_shared: bool,
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

/// A step of this checkout's cache whose from-empty rebuild, once proven
/// identical in another directory for its key, the clone may take instead
/// of rebuilding: the slow steps whose sources change rarely, the kernel
/// (10 to 15 minutes here) and the pinned vsock daemon (`cargo install`,
/// about 2 minutes). Its entry's sidecars are not compared.
pub struct SharedStep {
    pub step: &'static str,
    /// The files a build produces, compared by digest.
    pub files: &'static [&'static str],
    pub entry: xtask::cache::Entry,
}

impl SharedStep {
    pub fn kernel(kernel: &KernelBuild) -> SharedStep {
        SharedStep {
            step: "kernel",
            files: &["bzImage", "vmlinux", "config", "System.map", "release"],
            entry: kernel.entry.clone(),
        }
    }

    /// Builds (or finds) this checkout's vsock daemon.
    pub fn vsock(ctx: &Ctx) -> Result<SharedStep> {
        Ok(SharedStep {
            step: xtask::release::VSOCK_DAEMON,
            files: &[xtask::release::VSOCK_DAEMON, "Cargo.lock", "target"],
            entry: xtask::release::build_vsock(ctx)?,
        })
    }

    pub fn key(&self) -> &str {
        &self.entry.key
    }

    fn short(&self) -> String {
        format!("{} {}", self.step, &self.entry.key[..12])
    }
}

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

    /// Forgets everything the clone's releases built: its cache, its dist
    /// and the pipeline's cargo target dirs below `target/` (agent,
    /// runtime). Its own xtask (`target/debug`) stays, so that the next
    /// release is cold again and is timed without building the tool.
    pub fn forget_builds(&self) -> Result<()> {
        for dir in [&self.cache, &self.dist] {
            if dir.exists() {
                host_support::fs::remove_tree(dir)?;
            }
        }
        let target = self.root.join("target");
        for entry in
            std::fs::read_dir(&target).with_context(|| format!("read {}", target.display()))?
        {
            let entry = entry?;
            if entry.file_type()?.is_dir() && entry.file_name() != "debug" {
                host_support::fs::remove_tree(&entry.path())?;
            }
        }
        Ok(())
    }

    /// Puts a copy of a main cache entry into this clone's cache.
    pub fn seed(&self, shared: &SharedStep) -> Result<()> {
        xtask::cache::copy_entry_to(&shared.entry, &self.cache)
    }

    /// A `cargo` command in the clone, with the variant's umask, TZ and
    /// locale and none of the caller's cache or target overrides.
    fn cargo(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("cargo");
        cmd.args(args);
        self.isolate(&mut cmd);
        cmd
    }

    /// Runs `cmd` in the clone, with the variant's umask, TZ and locale and
    /// none of the caller's cache, dist or target overrides.
    fn isolate(&self, cmd: &mut Command) {
        cmd.current_dir(&self.root)
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
        Ok(self.release_steps()?.0)
    }

    /// `cargo xtask release` as a user types it; its wall time and what
    /// each of its steps cost (from its `--json` report).
    pub fn release_steps(&self) -> Result<(Duration, Vec<StepTiming>)> {
        let cache = self.cache.display().to_string();
        let dist = self.dist.display().to_string();
        let start = Instant::now();
        let report = xtask::tools::run_logged_json(
            &mut self.cargo(&[
                "xtask",
                "--json",
                "release",
                "--cache-dir",
                &cache,
                "--dist-dir",
                &dist,
            ]),
            &self.log,
        )
        .with_context(|| format!("release in clone {} ({})", self.name, self.root.display()))?;
        let took = start.elapsed();
        let steps = serde_json::from_value(report.get("steps").cloned().unwrap_or_default())
            .with_context(|| format!("clone {}: release --json has no step timings", self.name))?;
        Ok((took, steps))
    }

    /// `release` in the clone with this checkout's pipeline binary `exe`
    /// (built from the same sources: the clone is a copy of them), so the
    /// build tool is not compiled a second time; returns the wall time.
    pub fn release_with(&self, exe: &Path) -> Result<Duration> {
        let mut cmd = Command::new(exe);
        cmd.args(["release", "--cache-dir"])
            .arg(&self.cache)
            .arg("--dist-dir")
            .arg(&self.dist);
        self.isolate(&mut cmd);
        cmd.env(xtask::ROOT_ENV, &self.root);
        let start = Instant::now();
        xtask::tools::run_logged(&mut cmd, &self.log)
            .with_context(|| format!("release in clone {} ({})", self.name, self.root.display()))?;
        Ok(start.elapsed())
    }

    /// `image ARGS` in the clone with this checkout's pipeline binary.
    pub fn image_with(&self, exe: &Path, args: &[&str]) -> Result<()> {
        let mut cmd = Command::new(exe);
        cmd.arg("image")
            .args(args)
            .arg("--cache-dir")
            .arg(&self.cache)
            .arg("--dist-dir")
            .arg(&self.dist);
        self.isolate(&mut cmd);
        cmd.env(xtask::ROOT_ENV, &self.root);
        xtask::tools::run_logged(&mut cmd, &self.log).with_context(|| {
            format!(
                "image {} in clone {} ({})",
                args.join(" "),
                self.name,
                self.root.display()
            )
        })
    }

    pub fn sums(&self) -> Result<String> {
        sums_in(&self.dist)
    }

    fn entry_of(&self, shared: &SharedStep) -> PathBuf {
        xtask::cache::entry_dir_in(&self.cache, shared.step, shared.key())
    }
}

/// The main cache's record that a step's key rebuilt from empty, in
/// another directory, gave the same files.
#[derive(Serialize, Deserialize)]
pub struct Rebuilt {
    pub key: String,
    /// Unix time of the comparison.
    pub compared_at: u64,
    pub rebuilt_in: String,
    pub sha256: BTreeMap<String, String>,
}

impl Rebuilt {
    fn path(ctx: &Ctx, shared: &SharedStep) -> PathBuf {
        xtask::cache::record_path(
            &ctx.cache_dir,
            &format!("{}-rebuilt", shared.step),
            shared.key(),
        )
    }

    /// The record kept with the sources, for a machine whose cache is new.
    pub fn committed_path(ctx: &Ctx, shared: &SharedStep) -> PathBuf {
        ctx.root
            .join("ci")
            .join(format!("{}-rebuilt", shared.step))
            .join(format!("{}.json", shared.key()))
    }

    fn read(path: &Path, key: &str) -> Option<Rebuilt> {
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice::<Rebuilt>(&bytes)
            .ok()
            .filter(|r| r.key == key)
    }

    /// A record for `shared`'s key, from the main cache or kept with the
    /// sources, whose digests the main cache's files match. A record that
    /// they do not match is an error: two builds of one key differ.
    pub fn find(ctx: &Ctx, shared: &SharedStep) -> Result<Option<Rebuilt>> {
        let candidates = [Self::path(ctx, shared), Self::committed_path(ctx, shared)];
        let Some((path, record)) = candidates
            .iter()
            .find_map(|p| Self::read(p, shared.key()).map(|r| (p.clone(), r)))
        else {
            return Ok(None);
        };
        let mut differ = Vec::new();
        for f in shared.files {
            let have = file_sha256(&shared.entry.dir.join(f))?;
            match record.sha256.get(*f) {
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
                "{} in {} differs from the build recorded in {} (rebuilt in {}): {}; \
                 rerun with --rebuild-shared to compare two fresh builds",
                shared.short(),
                shared.entry.dir.display(),
                ctx.rel(&path),
                record.rebuilt_in,
                differ.join(", ")
            );
        }
        Ok(Some(record))
    }

    /// Compares a clone's from-scratch build of `shared` with the main
    /// cache's entry and, when every file matches, records it.
    pub fn compare_and_record(
        ctx: &Ctx,
        shared: &SharedStep,
        clone: &CleanClone,
    ) -> Result<Rebuilt> {
        let rebuilt = clone.entry_of(shared);
        let mut sha256 = BTreeMap::new();
        let mut differ = Vec::new();
        for f in shared.files {
            let a = file_sha256(&shared.entry.dir.join(f))?;
            let b = file_sha256(&rebuilt.join(f))
                .with_context(|| format!("clone {} built no {} {f}", clone.name, shared.step))?;
            if a != b {
                differ.push(format!("{f} ({} vs {})", &a[..12], &b[..12]));
            }
            sha256.insert(f.to_string(), a);
        }
        if !differ.is_empty() {
            bail!(
                "{} rebuilt from empty in {} differs from the cached one {}: {}",
                shared.short(),
                clone.root.display(),
                shared.entry.dir.display(),
                differ.join(", ")
            );
        }
        let record = Rebuilt {
            key: shared.key().to_string(),
            compared_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_secs(),
            rebuilt_in: clone.root.display().to_string(),
            sha256,
        };
        xtask::cache::write_atomic(
            &Self::path(ctx, shared),
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
    pub fn release(ctx: &Ctx, c: &CleanClone, what: &str) -> Result<(Duration, Vec<StepTiming>)> {
        let step = ctx.ui.step(&format!(
            "clone {}: cargo xtask release, {what} (log {})",
            c.name,
            ctx.rel(&c.log)
        ));
        let run = c.release_steps()?;
        step.finish("released");
        Ok(run)
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

/// A guest image the release leaves out but a packager builds: the debian
/// (systemd) guest as a dm-verity image, the measured rootfs whose root
/// hash a configuration pins, so it must rebuild bit for bit.
const EXTRA_IMAGE: &[&str] = &["--recipe", "debian", "--verity"];

/// [`EXTRA_IMAGE`] as `image` parses it, so both trees build the same
/// step with the command's own defaults.
fn extra_image_args() -> Result<xtask::image::ImageArgs> {
    xtask::image::ImageArgs::from_args(EXTRA_IMAGE)
}

/// Builds [`EXTRA_IMAGE`] here and in the clone and fails naming what
/// differs: the image's bytes or its `kernel_verity_params`. Returns the
/// image's digest and its parameters.
fn compare_extra_image(ctx: &Ctx, clone: &CleanClone, exe: &Path) -> Result<(String, String)> {
    let args = extra_image_args()?;
    let here = xtask::image::build(ctx, &args)?;
    let here_sha = file_sha256(&here.file)?;
    let here_params = here.verity_params.clone().unwrap_or_default();
    let step = ctx.ui.step(&format!(
        "clone {}: image {} (log {})",
        clone.name,
        EXTRA_IMAGE.join(" "),
        ctx.rel(&clone.log)
    ));
    clone.image_with(exe, EXTRA_IMAGE)?;
    step.finish("built");
    let name = xtask::image::file_name(ctx, &args);
    let manifest = xtask::manifest::Manifest::load(&clone.dist)?
        .with_context(|| format!("clone {} wrote no manifest", clone.name))?;
    let theirs = manifest
        .artifacts
        .iter()
        .find(|a| a.name == name)
        .with_context(|| format!("clone {}'s manifest has no {name}", clone.name))?;
    let their_sha = file_sha256(&clone.dist.join(&name))?;
    let their_params = theirs.kernel_verity_params.clone().unwrap_or_default();
    if here_sha != their_sha || here_params != their_params {
        bail!(
            "the two clean builds of {name} differ: sha256 {} vs {}, kernel_verity_params {here_params:?} vs {their_params:?}",
            &here_sha[..12],
            &their_sha[..12]
        );
    }
    Ok((here_sha, here_params))
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
             compare the two SHA256SUMS; then image --recipe debian --verity in both, compared by digest and kernel_verity_params",
        );
        return Ok(());
    }
    // Build one: this checkout's release.
    xtask::release::build(ctx, &xtask::release::ReleaseArgs::default())?;
    let kernel = xtask::kernel::build(ctx, &KernelArgs::default())?;
    let shared = [SharedStep::kernel(&kernel), SharedStep::vsock(ctx)?];
    let mut proven = Vec::new();
    let mut unproven = Vec::new();
    for step in shared {
        match Rebuilt::find(ctx, &step)? {
            Some(record) if !args.rebuild_shared => proven.push((step, record)),
            _ => unproven.push(step),
        }
    }
    // Build two: a clean clone.
    let base = tempfile::Builder::new().prefix("kata-repro-").tempdir()?;
    let step = ctx.ui.step("copy the sources into a clean clone");
    let clone = CleanClone::create_b(ctx, base.path())?;
    step.finish(&clone.root.display().to_string());
    let exe = crate::pipeline_exe(ctx)?;
    let result = (|| -> Result<String> {
        for (shared, record) in &proven {
            clone.seed(shared)?;
            ctx.ui.info(&format!(
                "test repro: {} was rebuilt from empty in {} with the files built here (unix time {}); the clone takes it from the main cache",
                shared.short(),
                record.rebuilt_in,
                record.compared_at
            ));
        }
        let what = match unproven.len() {
            0 => "kernel and vsock daemon from the main cache".to_string(),
            _ => format!(
                "everything from empty, {} too",
                unproven
                    .iter()
                    .map(|s| s.step)
                    .collect::<Vec<_>>()
                    .join(" and ")
            ),
        };
        let step = ctx.ui.step(&format!(
            "clone {}: {} release, {what} (log {})",
            clone.name,
            exe.display(),
            ctx.rel(&clone.log)
        ));
        clone.release_with(&exe)?;
        step.finish("released");
        let sums = compare(ctx, &ctx.dist(), &clone.dist)?;
        let (image_sha, params) = compare_extra_image(ctx, &clone, &exe)?;
        ctx.ui.info(&format!(
            "test repro: image {} is identical in both trees: sha256 {image_sha}, kernel_verity_params {params}",
            EXTRA_IMAGE.join(" ")
        ));
        for shared in &unproven {
            Rebuilt::compare_and_record(ctx, shared, &clone)?;
            ctx.ui.info(&format!(
                "test repro: {} rebuilt from empty is identical; recorded in the cache (copy it to {} to keep the proof with the sources)",
                shared.short(),
                ctx.rel(&Rebuilt::committed_path(ctx, shared))
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
    use super::{differing_sums, extra_image_args};

    #[test]
    fn the_extra_image_is_the_debian_verity_image() {
        let args = extra_image_args().unwrap();
        assert_eq!(args.recipe, "debian");
        assert!(args.verity && !args.no_dax);
        assert_eq!(args.fs, xtask::image::FsArg::Ext4);
    }

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
