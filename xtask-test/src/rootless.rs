//! `cargo xtask test rootless`: the guest builds work without root.
//!
//! A copy of the sources, owned by an unprivileged user (uid and gid
//! 65534, Debian's nobody/nogroup, with no supplementary groups), builds
//! `rootfs`, `initrd` (with and without the module kernel's modules) and
//! the DAX `image` of the minimal recipe with this checkout's `xtask`
//! binary, offline. Its cache holds only the verified downloads the
//! recipe needs and the module kernel's entry, copied from this checkout's
//! cache; the agent comes from `--agent-bin` (the user has no Rust
//! toolchain). Every artifact must be byte-identical to the one built here
//! as root; the user's tree must hold its own files (nothing was chowned)
//! with placeholders where the devices are, and its rootless record must
//! list them. An erofs image of that tree must be refused by name.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use xtask::context::Ctx;
use xtask::{image, initrd, kernel};

use crate::repro::{CleanClone, VARIANT_A};

/// Debian's `nobody` and `nogroup`.
const UID: u32 = 65534;
const GID: u32 = 65534;

/// One artifact: the unprivileged user's command and the file it
/// publishes, with the reference built as root.
struct Case {
    args: Vec<&'static str>,
    published: String,
    reference: PathBuf,
}

pub fn test(ctx: &Ctx) -> Result<()> {
    let step = ctx.ui.step("rootless: reference artifacts, built as root");
    let initrd_args = |kernel_modules| initrd::InitrdArgs {
        recipe: "minimal".into(),
        compression: initrd::CompressionArg::Gzip,
        kernel_modules,
    };
    let image_args = image::ImageArgs {
        recipe: "minimal".into(),
        fs: image::FsArg::Ext4,
        no_dax: false,
        align_mib: 128,
        free_mib: 0,
        verity: false,
        kernel_modules: false,
    };
    let cases = [
        Case {
            args: vec!["initrd", "--recipe", "minimal"],
            published: initrd::file_name(ctx, "minimal"),
            reference: initrd::build(ctx, &initrd_args(false))?.file,
        },
        Case {
            args: vec!["initrd", "--recipe", "minimal", "--kernel-modules"],
            published: initrd::file_name(ctx, "minimal-modules"),
            reference: initrd::build(ctx, &initrd_args(true))?.file,
        },
        Case {
            args: vec!["image", "--recipe", "minimal"],
            published: image::file_name(ctx, &image_args),
            reference: image::build(ctx, &image_args)?.file,
        },
    ];
    let agent = xtask::agent::build(ctx)?.binary;
    let module_kernel = xtask::graph::build_one(ctx, |g| {
        let args = kernel::KernelArgs {
            modules: true,
            ..Default::default()
        };
        Ok(kernel::add(g, ctx, &args)?.kernel)
    })?;
    step.finish("initrd, initrd with modules, DAX image");

    let base = tempfile::Builder::new()
        .prefix("kata-rootless-")
        .tempdir()
        .context("cannot create a temp dir")?;
    let work = base.path();
    let result = build_as_user(ctx, &cases, &agent, &module_kernel, work);
    if result.is_err() {
        let kept = base.keep();
        ctx.ui
            .info(&format!("rootless: kept {} for inspection", kept.display()));
    }
    result
}

/// Everything the unprivileged user does, in `work`.
fn build_as_user(
    ctx: &Ctx,
    cases: &[Case],
    agent: &Path,
    module_kernel: &xtask::cache::Entry,
    work: &Path,
) -> Result<()> {
    let clone = CleanClone::create(
        ctx,
        "rootless",
        &work.join("src"),
        &work.join("state"),
        VARIANT_A,
    )?;
    // What the user may use: the verified downloads of the recipe (busybox
    // and the lock's packages), the module kernel, the agent, the tool.
    let cache = ctx.cache()?;
    let (recipe, _) = xtask::rootfs::load_recipe(ctx, "minimal")?;
    let mut downloads = vec![ctx.versions.busybox.debian.sha256.to_string()];
    if let Some((_, lock)) = xtask::rootfs::load_lock(ctx, &recipe)? {
        downloads.extend(lock.packages.iter().map(|p| p.sha256.clone()));
    }
    for sha in &downloads {
        let file = cache
            .stored_input(sha)
            .with_context(|| format!("download {sha} is not in this checkout's cache"))?;
        let dir = clone.cache.join("inputs").join(sha);
        std::fs::create_dir_all(&dir)?;
        std::fs::copy(&file, dir.join(file.file_name().expect("a file name")))?;
    }
    xtask::cache::copy_entry_to(module_kernel, &clone.cache)?;
    let tools = work.join("tools");
    std::fs::create_dir(&tools)?;
    std::fs::copy(agent, tools.join("kata-agent"))?;
    std::fs::copy(crate::pipeline_exe(ctx)?, tools.join("xtask"))?;
    let home = work.join("home");
    std::fs::create_dir(&home)?;
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755))?;
    chown_tree(work)?;

    let dist = clone.root.join("target/dist-rootless");
    let run = |args: &[&str]| -> Result<std::process::Output> {
        let mut cmd = Command::new(tools.join("xtask"));
        cmd.env_clear()
            .env("HOME", &home)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env(xtask::ROOT_ENV, &clone.root)
            .arg("--cache-dir")
            .arg(&clone.cache)
            .arg("--dist-dir")
            .arg(&dist)
            .arg("--agent-bin")
            .arg(tools.join("kata-agent"))
            .arg("--offline")
            .args(args)
            .current_dir(&clone.root)
            // std clears the supplementary groups when root sets a uid.
            .gid(GID)
            .uid(UID);
        let out = cmd
            .output()
            .with_context(|| format!("cannot run xtask {} as uid {UID}", args.join(" ")))?;
        let mut log = std::fs::OpenOptions::new().append(true).open(&clone.log)?;
        writeln!(log, "$ xtask {}", args.join(" "))?;
        log.write_all(&out.stderr)?;
        log.write_all(&out.stdout)?;
        Ok(out)
    };
    let failed = |args: &[&str], out: &std::process::Output| {
        format!(
            "`xtask {}` as uid {UID} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    };

    for case in cases {
        let step = ctx.ui.step(&format!(
            "rootless: xtask {} as uid {UID}",
            case.args.join(" ")
        ));
        let out = run(&case.args)?;
        if !out.status.success() {
            bail!(failed(&case.args, &out));
        }
        let built = dist.join(&case.published);
        let (ours, theirs) = (sha256(&case.reference)?, sha256(&built)?);
        if ours != theirs {
            bail!(
                "{} built as uid {UID} differs from the one built as root: sha256 {theirs} against {ours} ({})",
                case.published,
                case.reference.display()
            );
        }
        step.finish(&format!("identical to root's ({})", &ours[..16]));
    }

    let step = ctx.ui.step("rootless: the published tree and its record");
    let args = ["rootfs", "--recipe", "minimal"];
    let out = run(&args)?;
    if !out.status.success() {
        bail!(failed(&args, &out));
    }
    let tree = dist.join("rootfs-minimal");
    check_tree(&tree)?;
    step.finish("owned by the user, devices recorded");

    let step = ctx
        .ui
        .step("rootless: an erofs image of the tree is refused");
    let args = ["image", "--recipe", "minimal", "--fs", "erofs"];
    let out = run(&args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !stderr.contains("/dev/console") || !stderr.contains("--fs ext4") {
        bail!(
            "an erofs image of a rootless tree must be refused naming a device and --fs ext4; got {}: {}",
            out.status,
            stderr.trim()
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(&dist)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("erofs"))
        .map(|e| e.path())
        .collect();
    if !leftovers.is_empty() {
        bail!("the refused erofs build left {leftovers:?}");
    }
    step.finish("refused");
    Ok(())
}

/// The user's tree: everything is the user's own, the devices are empty
/// placeholder files, and the record beside the tree lists them.
fn check_tree(tree: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(tree) {
        let entry = entry?;
        let meta = entry.path().symlink_metadata()?;
        if (meta.uid(), meta.gid()) != (UID, GID) {
            bail!(
                "{} is owned by {}:{}, not by the user who built it",
                entry.path().display(),
                meta.uid(),
                meta.gid()
            );
        }
    }
    let record = rootfs_builder::RootlessRecord::load(tree)?
        .with_context(|| format!("{}: no rootless record beside it", tree.display()))?;
    let devices: Vec<&str> = record.devices.keys().map(String::as_str).collect();
    if record.owner != (0, 0) || devices != ["dev/console", "dev/kmsg", "dev/null"] {
        bail!(
            "{}: the record gives owner {:?} and devices {devices:?}; expected 0:0 and console, kmsg, null",
            tree.display(),
            record.owner
        );
    }
    for device in devices {
        let meta = tree.join(device).symlink_metadata()?;
        if !meta.is_file() || meta.len() != 0 {
            bail!("{device}: not an empty placeholder file in the user's tree");
        }
    }
    Ok(())
}

fn chown_tree(dir: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(dir) {
        let path = entry?.into_path();
        std::os::unix::fs::lchown(&path, Some(UID), Some(GID))
            .with_context(|| format!("chown {}", path.display()))?;
    }
    Ok(())
}

fn sha256(path: &Path) -> Result<String> {
    host_support::hash::sha256_file(path)
        .with_context(|| format!("{}: cannot hash", path.display()))
}
