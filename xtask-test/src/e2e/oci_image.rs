//! The test image: the host's busybox (see [`image_busybox`]), written as a
//! deterministic OCI archive and imported into the private containerd.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::json;
use xtask::context::Ctx;
use xtask::hash::{bytes_sha256, file_sha256};

use super::bounded::run_bounded;
use super::containerd::PrivateContainerd;
use super::{APPLETS, IMAGE_TAG};

/// Seam: the busybox put in the test image. For now the host's
/// busybox-static package; the pipeline's verified pin
/// (`ctx.fetcher()?.debian_member("busybox", &ctx.versions.busybox.debian)`)
/// is the intended source once the e2e run may take the cache lock.
pub fn image_busybox(_ctx: &Ctx) -> Result<PathBuf> {
    let p = PathBuf::from("/bin/busybox");
    if !p.is_file() {
        bail!("/bin/busybox is missing: apt-get install busybox-static (the e2e image is built from it)");
    }
    Ok(p)
}

#[derive(Debug, Clone, Serialize)]
pub struct OciImage {
    /// `base_name:tag`, as containerd lists it after the import.
    pub name: String,
    /// The repository part, for `ctr images import --base-name`.
    #[serde(skip)]
    pub base_name: String,
    /// Inside the run's temp dir: gone after the run unless --keep.
    #[serde(skip)]
    pub archive: PathBuf,
    pub manifest_digest: String,
    pub config_digest: String,
    pub layer_digest: String,
    pub busybox_sha256: String,
}

pub(super) fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "s390x" => "s390x",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Writes an OCI image layout archive (oci-layout, index.json, blobs/sha256/
/// with config, manifest and one gzip layer) of busybox and its applet
/// links, named `base_name:IMAGE_TAG`, running `cmd` by default. Same
/// busybox, command and epoch -> same bytes, same digests.
pub fn write_oci_archive(
    busybox: &Path,
    work: &Path,
    epoch: i64,
    base_name: &str,
    cmd: &[&str],
) -> Result<OciImage> {
    let layer_root = work.join("layer");
    let layout = work.join("layout");
    let _ = std::fs::remove_dir_all(&layer_root);
    let _ = std::fs::remove_dir_all(&layout);
    for d in ["bin", "etc", "dev", "proc", "sys", "tmp", "root"] {
        std::fs::create_dir_all(layer_root.join(d))?;
    }
    std::fs::set_permissions(
        layer_root.join("tmp"),
        std::fs::Permissions::from_mode(0o1777),
    )?;
    std::fs::set_permissions(
        layer_root.join("root"),
        std::fs::Permissions::from_mode(0o700),
    )?;
    let bb = layer_root.join("bin/busybox");
    std::fs::copy(busybox, &bb).with_context(|| format!("copy {}", busybox.display()))?;
    std::fs::set_permissions(&bb, std::fs::Permissions::from_mode(0o755))?;
    for applet in APPLETS {
        std::os::unix::fs::symlink("busybox", layer_root.join("bin").join(applet))?;
    }
    std::fs::write(
        layer_root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
    )?;
    std::fs::write(layer_root.join("etc/group"), "root:x:0:\n")?;
    for f in ["etc/passwd", "etc/group"] {
        std::fs::set_permissions(layer_root.join(f), std::fs::Permissions::from_mode(0o644))?;
    }
    rootfs_builder::tree::pin_times(&layer_root, epoch)?;

    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let layer_tar = work.join("layer.tar");
    rootfs_builder::tar::write_tree_tar(
        &layer_root,
        std::io::BufWriter::new(std::fs::File::create(&layer_tar)?),
    )?;
    let diff_id = file_sha256(&layer_tar)?;
    let layer_gz = work.join("layer.tar.gz");
    // gzip -n: no name, no timestamp in the header, so the digest depends on
    // the content only.
    let status = Command::new("gzip")
        .args(["-9", "-n", "-c"])
        .stdin(std::fs::File::open(&layer_tar)?)
        .stdout(std::fs::File::create(&layer_gz)?)
        .status()
        .context("cannot run gzip")?;
    if !status.success() {
        bail!("gzip -9 -n of {} failed ({status})", layer_tar.display());
    }
    let layer_digest = file_sha256(&layer_gz)?;
    let layer_size = std::fs::metadata(&layer_gz)?.len();
    std::fs::rename(&layer_gz, blobs.join(&layer_digest))?;
    std::fs::remove_file(&layer_tar)?;

    let config = json!({
        "architecture": go_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": cmd,
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{diff_id}")] },
    });
    let config_bytes = serde_json::to_vec(&config)?;
    let config_digest = bytes_sha256(&config_bytes);
    std::fs::write(blobs.join(&config_digest), &config_bytes)?;

    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config_bytes.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_size,
        }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = bytes_sha256(&manifest_bytes);
    std::fs::write(blobs.join(&manifest_digest), &manifest_bytes)?;

    // The ref name is the tag only: `ctr images import --base-name` puts the
    // repository in front of it.
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_bytes.len(),
            "platform": { "architecture": go_arch(), "os": "linux" },
            "annotations": { "org.opencontainers.image.ref.name": IMAGE_TAG },
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    for f in xtask::cache::files_below(&layout)? {
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644))?;
    }
    rootfs_builder::tree::pin_times(&layout, epoch)?;
    let archive = work.join("kata-e2e-image.oci.tar");
    host_support::fs::write_atomic_with(
        &archive,
        |f| rootfs_builder::tar::write_tree_tar(&layout, std::io::BufWriter::new(f)),
        |_| Ok(()),
    )?;
    let _ = std::fs::remove_dir_all(&layer_root);
    let _ = std::fs::remove_dir_all(&layout);
    Ok(OciImage {
        name: format!("{base_name}:{IMAGE_TAG}"),
        base_name: base_name.into(),
        archive,
        manifest_digest: format!("sha256:{manifest_digest}"),
        config_digest: format!("sha256:{config_digest}"),
        layer_digest: format!("sha256:{layer_digest}"),
        busybox_sha256: file_sha256(busybox)?,
    })
}

/// Imports the archive and checks that containerd lists it under its name
/// with the manifest digest we wrote.
pub fn import_image(cd: &PrivateContainerd, image: &OciImage) -> Result<()> {
    let ctr = cd.ctr();
    let mut cmd = ctr.command(&[
        "images",
        "import",
        "--base-name",
        &image.base_name,
        "--snapshotter",
        "overlayfs",
    ]);
    cmd.arg(&image.archive);
    run_bounded(cmd, None, Duration::from_secs(120))?
        .require_success()
        .with_context(|| format!("import the test image; containerd log:\n{}", cd.log_tail()))?;
    let list = run_bounded(
        ctr.command(&["images", "ls"]),
        None,
        Duration::from_secs(30),
    )?
    .require_success()?;
    let line = list
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(image.name.as_str()));
    match line {
        Some(l) if l.contains(&image.manifest_digest) => Ok(()),
        Some(l) => bail!(
            "containerd lists {} with another digest than {}: {l}",
            image.name,
            image.manifest_digest
        ),
        None => bail!(
            "after import containerd does not list {}:\n{}",
            image.name,
            list.stdout
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use xtask::hash::file_sha256;

    use super::write_oci_archive;

    const BASE: &str = "localhost/t";

    #[test]
    fn oci_archive_is_deterministic_and_complete() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        std::fs::create_dir_all(&a).unwrap();
        std::fs::create_dir_all(&b).unwrap();
        let bb = dir.path().join("busybox");
        std::fs::write(&bb, b"#!not really busybox\n").unwrap();
        let ia = write_oci_archive(&bb, &a, 1_700_000_000, BASE, &["/bin/sh"]).unwrap();
        let ib = write_oci_archive(&bb, &b, 1_700_000_000, BASE, &["/bin/sh"]).unwrap();
        assert_eq!(
            file_sha256(&ia.archive).unwrap(),
            file_sha256(&ib.archive).unwrap()
        );
        assert_eq!(ia.manifest_digest, ib.manifest_digest);
        let list = Command::new("tar")
            .arg("-tf")
            .arg(&ia.archive)
            .output()
            .unwrap();
        let names = String::from_utf8(list.stdout).unwrap();
        for want in [
            "./oci-layout",
            "./index.json",
            &format!("./blobs/sha256/{}", &ia.manifest_digest[7..]),
        ] {
            assert!(
                names.lines().any(|l| l == want),
                "{want} missing from:\n{names}"
            );
        }
        let ic = write_oci_archive(&bb, &a, 1_700_000_001, BASE, &["/bin/sh"]).unwrap();
        assert_ne!(
            ic.layer_digest, ia.layer_digest,
            "the epoch is part of the layer"
        );
        let id = write_oci_archive(&bb, &a, 1_700_000_000, BASE, &["/bin/true"]).unwrap();
        assert_eq!(id.layer_digest, ia.layer_digest);
        assert_ne!(
            id.config_digest, ia.config_digest,
            "the command is part of the config"
        );
        assert_eq!(ia.name, "localhost/t:latest");
    }
}
