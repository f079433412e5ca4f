//! Direct-assigned block volumes end to end: `kata-runtime direct-volume
//! add` for an ext4 disk image made here with mke2fs, a container mounting
//! the volume path (the image hot-plugged into its VM as virtio-blk),
//! `stats` and an online `resize` through the shim, the data on the host's
//! image after the container is gone, and the bad input of each command.
//! Also the measured (dm-verity) root image through containerd.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use runtime::direct_volume;

use super::bounded::{run_bounded, Outcome};
use super::scenarios::{kata_runtime_binary, kill_and_delete, wait_no_leftovers, Runner};

const MIB: u64 = 1024 * 1024;
const FIRST_SIZE: u64 = 64 * MIB;
const GROWN_SIZE: u64 = 128 * MIB;
const WRITTEN: &str = "written-in-the-guest";

fn run(program: &Path, args: &[&str], timeout: Duration) -> Result<Outcome> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    run_bounded(cmd, None, timeout)
}

/// Expects a refusal: exit status `code` and `says` in stderr.
fn refused(what: &str, out: Outcome, code: i32, says: &str) -> Result<String> {
    if out.code != Some(code) || !out.stderr.contains(says) {
        bail!(
            "{what}: expected exit {code} saying {says:?}, got {}",
            out.describe()
        );
    }
    Ok(out.stderr.trim().to_string())
}

/// `df -k` of `/data` in the container: its size in KiB.
fn data_size_kib(r: &Runner, id: &str, exec_id: &str) -> Result<u64> {
    let out = run_bounded(
        r.ctr()
            .exec_command(id, exec_id, &["busybox", "df", "-k", "/data"]),
        None,
        r.timeout,
    )?
    .require_success()?;
    out.stdout
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("df -k /data printed {:?}", out.stdout))
}

/// The `usage[0].total` of `direct-volume stats`, checked for shape.
fn stats_total(kata_runtime: &Path, volume: &str, r: &Runner) -> Result<(u64, String)> {
    let out = run(
        kata_runtime,
        &["direct-volume", "stats", "--volume-path", volume],
        r.timeout,
    )?
    .require_success()?;
    let v: serde_json::Value = serde_json::from_str(out.stdout.trim())
        .with_context(|| format!("direct-volume stats printed {:?}", out.stdout))?;
    let bytes = &v["usage"][0];
    if bytes["unit"] != 1 || v["usage"][1]["unit"] != 2 || v["volume_condition"]["message"] != "OK"
    {
        bail!("direct-volume stats: not upstream's shape (bytes, inodes, condition OK): {v}");
    }
    let total = bytes["total"].as_u64().context("usage[0].total")?;
    let used = bytes["used"].as_u64().unwrap_or(0);
    if used == 0 || used > total {
        bail!("direct-volume stats: used {used} of {total} bytes");
    }
    Ok((total, out.stdout.trim().to_string()))
}

/// Processes that have `path` open.
fn holders_of(path: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == path))
        {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push(format!(
                "{}[{}]",
                comm.trim(),
                p.file_name().to_string_lossy()
            ));
        }
    }
    out
}

pub(super) fn scenario_direct_volume(r: &mut Runner, ids: &[String]) -> Result<String> {
    let (sandbox, member, member2) = (ids[0].as_str(), ids[1].as_str(), ids[2].as_str());
    let kata_runtime = kata_runtime_binary(r)?;
    let dir = tempfile::Builder::new()
        .prefix("kata-e2e-dvol-")
        .tempdir_in("/tmp")?;
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image)?.set_len(FIRST_SIZE)?;
    run(
        Path::new("mkfs.ext4"),
        &["-q", "-F", "-E", "root_owner=0:0", &image.to_string_lossy()],
        r.timeout,
    )
    .context("mkfs.ext4 (apt-get install e2fsprogs)")?
    .require_success()?;
    let volume = dir.path().join("volume");
    std::fs::create_dir(&volume)?;
    let volume = volume.to_string_lossy().into_owned();
    let never = dir
        .path()
        .join("never-added")
        .to_string_lossy()
        .into_owned();
    let mount_info = serde_json::json!({
        "volume-type": "block",
        "device": image,
        "fstype": "ext4",
    })
    .to_string();
    let dv = |args: &[&str]| {
        let mut all = vec!["direct-volume"];
        all.extend_from_slice(args);
        run(&kata_runtime, &all, r.timeout)
    };

    // Bad input, before anything exists.
    let mut said = vec![refused(
        "add with malformed JSON",
        dv(&[
            "add",
            "--volume-path",
            &volume,
            "--mount-info",
            "{\"volume-type\":",
        ])?,
        2,
        "--mount-info",
    )?];
    said.push(refused(
        "remove of a path never added",
        dv(&["remove", "--volume-path", &never])?,
        2,
        "was never added",
    )?);
    said.push(refused(
        "stats of a path never added",
        dv(&["stats", "--volume-path", &never])?,
        2,
        "was never added",
    )?);

    dv(&["add", "--volume-path", &volume, "--mount-info", &mount_info])?.require_success()?;
    let record = Path::new(direct_volume::ROOT).join(direct_volume::dir_name(&volume));
    let stored = std::fs::read_to_string(record.join(direct_volume::MOUNT_INFO_FILE))
        .context("direct-volume add wrote no mountInfo.json")?;
    if stored != mount_info {
        bail!("mountInfo.json holds {stored:?}, not what was added");
    }
    let result = (|| -> Result<String> {
        said.push(refused(
            "stats before any sandbox mounts it",
            dv(&["stats", "--volume-path", &volume])?,
            1,
            "no running sandbox mounts it",
        )?);
        // A pod: the sandbox container, then members mounting the volume,
        // so that a member's delete unplugs the disk from a VM that runs on.
        let pod = |kind: &str| {
            vec![
                "-d".to_string(),
                "--annotation".into(),
                format!("io.kubernetes.cri.container-type={kind}"),
                "--annotation".into(),
                format!("io.kubernetes.cri.sandbox-id={sandbox}"),
            ]
        };
        let mount = format!("type=bind,src={volume},dst=/data,options=rbind:rw");
        let start = |id: &str, mut flags: Vec<String>, with_volume: bool| -> Result<()> {
            if with_volume {
                flags.extend(["--mount".into(), mount.clone()]);
            }
            let f: Vec<&str> = flags.iter().map(String::as_str).collect();
            r.run(id, &f, &["sleep", "300"], None)?.require_success()?;
            r.ctr()
                .wait_task_status(id, "RUNNING", Duration::from_secs(60))
        };
        start(sandbox, pod("sandbox"), false)?;
        start(member, pod("container"), true)?;
        if !record.join(sandbox).exists() {
            bail!(
                "sandbox {sandbox} is not recorded as the volume's user in {}",
                record.display()
            );
        }
        let seen = run_bounded(
            r.ctr().exec_command(
                member,
                "write",
                &[
                    "sh",
                    "-c",
                    &format!("echo {WRITTEN} > /data/hello && sync && grep ' /data ' /proc/mounts"),
                ],
            ),
            None,
            r.timeout,
        )?
        .require_success()?;
        let mount_line = seen.stdout.trim().to_string();
        if !mount_line.starts_with("/dev/vd") || !mount_line.contains(" ext4 ") {
            bail!("/data in the container is {mount_line:?}, not an ext4 virtio-blk disk");
        }
        let before_kib = data_size_kib(r, member, "df1")?;
        let (total_before, stats_text) = stats_total(&kata_runtime, &volume, r)?;

        said.push(refused(
            "resize to a smaller size",
            dv(&[
                "resize",
                "--volume-path",
                &volume,
                "--size",
                &(FIRST_SIZE / 2).to_string(),
            ])?,
            1,
            "shrinking is not supported",
        )?);
        dv(&[
            "resize",
            "--volume-path",
            &volume,
            "--size",
            &GROWN_SIZE.to_string(),
        ])?
        .require_success()?;
        let host_size = std::fs::metadata(&image)?.len();
        if host_size != GROWN_SIZE {
            bail!("after resize the image is {host_size} bytes, expected {GROWN_SIZE}");
        }
        let after_kib = data_size_kib(r, member, "df2")?;
        let (total_after, _) = stats_total(&kata_runtime, &volume, r)?;
        if after_kib < before_kib + 50 * 1024 || total_after <= total_before {
            bail!(
                "after resize to 128 MiB the filesystem did not grow: df {before_kib} -> {after_kib} KiB, stats {total_before} -> {total_after} bytes"
            );
        }

        // The member goes: its disk is unplugged, QEMU lets go of the
        // image, the sandbox runs on.
        kill_and_delete(r, member)?;
        let holders = holders_of(&image);
        if !holders.is_empty() {
            bail!("after the member's delete, {} is still open in {holders:?}: the disk was not unplugged", image.display());
        }
        if record.join(sandbox).exists() {
            bail!("the volume still records sandbox {sandbox} after its member was deleted");
        }
        run_bounded(
            r.ctr().exec_command(sandbox, "alive", &["true"]),
            None,
            r.timeout,
        )?
        .require_success()
        .context("the sandbox after its member's disk was unplugged")?;
        // Plugged again (the slot and node names are free): the data is there.
        start(member2, pod("container"), true)?;
        let again = run_bounded(
            r.ctr()
                .exec_command(member2, "read", &["cat", "/data/hello"]),
            None,
            r.timeout,
        )?
        .require_success()?;
        if again.stdout.trim() != WRITTEN {
            bail!("plugged again, /data/hello holds {:?}", again.stdout.trim());
        }
        kill_and_delete(r, member2)?;
        kill_and_delete(r, sandbox)?;
        wait_no_leftovers(
            &r.env.containerd,
            Duration::from_secs(30),
            "after the direct-volume pod was deleted",
        )?;
        // The data is on the host's image, and the filesystem is clean and grown.
        let cat = run(
            Path::new("debugfs"),
            &["-R", "cat /hello", &image.to_string_lossy()],
            r.timeout,
        )?
        .require_success()?;
        if cat.stdout.trim() != WRITTEN {
            bail!(
                "the host's image holds {:?} in /hello, not {WRITTEN:?}",
                cat.stdout.trim()
            );
        }
        run(
            Path::new("e2fsck"),
            &["-fn", &image.to_string_lossy()],
            r.timeout,
        )?
        .require_success()
        .context("the image's filesystem is not clean after the pod")?;
        Ok(format!(
            "{mount_line}; df {before_kib} -> {after_kib} KiB after resize to {GROWN_SIZE} bytes; stats {stats_text}; unplugged at the member's delete (sandbox alive), plugged again for a second member that read it back; {WRITTEN:?} read from the host's image, e2fsck clean"
        ))
    })();
    let removed = dv(&["remove", "--volume-path", &volume]);
    let outcome = result?;
    removed?.require_success()?;
    if record.exists() {
        bail!(
            "{} is still there after direct-volume remove",
            record.display()
        );
    }
    Ok(format!("{outcome}; refused: {}", said.join(" | ")))
}

/// The measured root through containerd: a configuration naming the
/// verity image and its `kernel_verity_params` runs a container; the same
/// with a copy of the image whose agent has one byte changed fails the
/// start within seconds with the guest's reason, and leaves nothing.
pub(super) fn scenario_verity(r: &mut Runner, ids: &[String]) -> Result<String> {
    let (good, bad) = (ids[0].as_str(), ids[1].as_str());
    let default_config = r
        .env
        .kata_config
        .clone()
        .context("the harness wrote no configuration.toml")?;
    let text = std::fs::read_to_string(&default_config)?;
    let args = xtask::image::ImageArgs {
        verity: true,
        ..xtask::image::ImageArgs::for_recipe("minimal")
    };
    let built = xtask::image::build(r.ctx, &args)?;
    let params = built
        .verity_params
        .clone()
        .context("the verity image has no kernel_verity_params")?;
    let dir = tempfile::Builder::new()
        .prefix("kata-e2e-verity-")
        .tempdir_in("/var/tmp")?;
    let tampered = crate::vmtest::tampered_copy(r.ctx, &built.file, dir.path())?;
    let config_for = |image: &Path, name: &str| -> Result<String> {
        let mut cfg = runtime::config::parse(&text, &default_config)?;
        cfg.hypervisor.initrd = None;
        cfg.hypervisor.image = Some(image.to_path_buf());
        cfg.hypervisor.rootfs_type = "ext4".into();
        cfg.hypervisor.kernel_verity_params = params.clone();
        let file = dir.path().join(name);
        std::fs::write(&file, cfg.to_file().to_toml()?)?;
        // The file must be one the shim accepts as it is.
        runtime::config::parse(&std::fs::read_to_string(&file)?, &file)?;
        Ok(file.display().to_string())
    };
    let good_config = config_for(&built.file, "configuration-verity.toml")?;
    let bad_config = config_for(&tampered, "configuration-tampered.toml")?;

    let out = r
        .run(
            good,
            &["--rm", "--runtime-config-path", &good_config],
            &["echo", "verified-root"],
            None,
        )?
        .require_success()?;
    if out.stdout.trim() != "verified-root" {
        bail!("the container on the verity root printed {:?}", out.stdout);
    }
    let refused = r.run(
        bad,
        &["--rm", "--runtime-config-path", &bad_config],
        &["echo", "must-not-run"],
        None,
    )?;
    let says = "Requested init /sbin/init failed";
    if refused.success()
        || refused.stdout.contains("must-not-run")
        || !refused.stderr.contains(says)
    {
        bail!(
            "a tampered verity image: expected ctr run to fail saying {says:?}, got {}",
            refused.describe()
        );
    }
    r.env.containerd.force_remove(bad);
    wait_no_leftovers(
        &r.env.containerd,
        Duration::from_secs(30),
        "after the verity sandboxes",
    )?;
    Ok(format!(
        "verity root ({}) ran a container in {} ms; the tampered copy was refused after {} ms: {}",
        params.split(',').next().unwrap_or(""),
        out.took.as_millis(),
        refused.took.as_millis(),
        refused
            .stderr
            .lines()
            .find(|l| l.contains(says))
            .unwrap_or("")
            .trim()
    ))
}
