//! `cargo xtask test rootless`: the guest builds work without root.
//!
//! A copy of the sources, owned by an unprivileged user (uid and gid
//! 65534, Debian's nobody/nogroup, with no supplementary groups), builds
//! `rootfs`, `initrd` (with and without the module kernel's modules) and
//! the DAX `image` of the minimal recipe, and the DAX image of the debian
//! recipe (mmdebstrap's unshare mode), with this checkout's `xtask`
//! binary, offline. Its cache holds only the verified downloads the
//! recipes need and the module kernel's entry, copied from this checkout's
//! cache; the agent comes from `--agent-bin` (the user has no Rust
//! toolchain). Every artifact must be byte-identical to the one built here
//! as root; the user's tree must hold its own files (nothing was chowned)
//! with placeholders where the devices are, and its rootless record must
//! list them. An erofs image of that tree must be refused by name.
//!
//! The unshare mode maps the user's subordinate ids from /etc/subuid and
//! /etc/subgid. The host's files are not touched: the user runs in a
//! private mount namespace where a file of the test's, giving nobody
//! 65536 ids from 1879048192 (far above adduser's ranges), is
//! bind-mounted over each.

use std::ffi::CString;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
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
/// The subordinate ids the user gets in its mount namespace: far above
/// the ranges adduser hands out (100000 on), so that no host user owns
/// the chroot's files while mmdebstrap runs.
const SUBORDINATE_IDS: &str = "nobody:1879048192:65536\n";

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
    let image_args = image::ImageArgs::for_recipe;
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
            published: image::file_name(ctx, &image_args("minimal")),
            reference: image::build(ctx, &image_args("minimal"))?.file,
        },
        Case {
            args: vec!["image", "--recipe", "debian"],
            published: image::file_name(ctx, &image_args("debian")),
            reference: image::build(ctx, &image_args("debian"))?.file,
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
    step.finish("minimal initrd, with modules, DAX image; debian DAX image");

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
    let mut downloads = vec![ctx.versions.busybox.debian.sha256.to_string()];
    for name in ["minimal", "debian"] {
        let (recipe, _) = xtask::rootfs::load_recipe(ctx, name)?;
        if let Some((_, lock)) = xtask::rootfs::load_lock(ctx, &recipe)? {
            downloads.extend(lock.packages.iter().map(|p| p.sha256.clone()));
        }
    }
    downloads.sort();
    downloads.dedup();
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
    let subordinate = work.join("subordinate-ids");
    std::fs::write(&subordinate, SUBORDINATE_IDS)?;
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
            .current_dir(&clone.root);
        as_user_with_subordinate_ids(&mut cmd, &subordinate)?;
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

    for recipe in ["minimal", "debian"] {
        let step = ctx.ui.step(&format!(
            "rootless: the published {recipe} tree and its record"
        ));
        let args = ["rootfs", "--recipe", recipe];
        let out = run(&args)?;
        if !out.status.success() {
            bail!(failed(&args, &out));
        }
        let tree = dist.join(format!("rootfs-{recipe}"));
        let record = check_tree(&tree)?;
        let devices: Vec<&str> = record.devices.keys().map(String::as_str).collect();
        let expected = if recipe == "minimal" {
            devices == ["dev/console", "dev/kmsg", "dev/null"]
                && record.owners.is_empty()
                && record.modes.is_empty()
        } else {
            // Debian's own: /etc/shadow is 0000, unix_chkpwd is set-gid
            // shadow, mmdebstrap made the usual nodes in /dev.
            devices.contains(&"dev/console")
                && devices.contains(&"dev/null")
                && record.modes.get("etc/shadow") == Some(&0)
                && record
                    .owners
                    .get("usr/sbin/unix_chkpwd")
                    .is_some_and(|(uid, gid)| *uid == 0 && *gid != 0)
        };
        if !expected {
            bail!(
                "{}: unexpected record: devices {devices:?}, owners {:?}, modes {:?}",
                tree.display(),
                record.owners,
                record.modes
            );
        }
        step.finish(&format!(
            "the user's files; {} devices, {} other owners, {} modes recorded",
            record.devices.len(),
            record.owners.len(),
            record.modes.len()
        ));
    }

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

/// Makes `cmd` run as [`UID`]/[`GID`] without supplementary groups, in a
/// private mount namespace where `ids` is bind-mounted over /etc/subuid
/// and /etc/subgid (the namespace goes with the process).
fn as_user_with_subordinate_ids(cmd: &mut Command, ids: &Path) -> Result<()> {
    for file in ["/etc/subuid", "/etc/subgid"] {
        if !Path::new(file).is_file() {
            bail!("{file} is missing: it is a mount point for the test's subordinate ids (Debian's essential package login creates it)");
        }
    }
    let c = |p: &[u8]| CString::new(p).context("a path with a NUL byte");
    let source = c(ids.as_os_str().as_bytes())?;
    let targets = [c(b"/etc/subuid")?, c(b"/etc/subgid")?];
    let root = c(b"/")?;
    // SAFETY: between fork and exec only async-signal-safe libc calls are
    // made, on CStrings prepared before the fork; each failure returns
    // the errno, which fails the spawn.
    unsafe {
        cmd.pre_exec(move || {
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            for target in &targets {
                check(libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(GID))?;
            check(libc::setuid(UID))
        });
    }
    Ok(())
}

/// The user's tree: everything is the user's own and the owner can read
/// it, the record beside it gives 0:0 to the rest, and its devices are
/// empty placeholder files.
fn check_tree(tree: &Path) -> Result<rootfs_builder::RootlessRecord> {
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
        if !meta.file_type().is_symlink() && meta.mode() & 0o400 == 0 {
            bail!("{}: its owner cannot read it", entry.path().display());
        }
    }
    let record = rootfs_builder::RootlessRecord::load(tree)?
        .with_context(|| format!("{}: no rootless record beside it", tree.display()))?;
    if record.owner != (0, 0) {
        bail!(
            "{}: the record gives {:?}, not 0:0",
            tree.display(),
            record.owner
        );
    }
    for device in record.devices.keys() {
        let meta = tree.join(device).symlink_metadata()?;
        if !meta.is_file() || meta.len() != 0 {
            bail!("{device}: not an empty placeholder file in the user's tree");
        }
    }
    Ok(record)
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
