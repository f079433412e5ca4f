//! `cargo xtask release` as a user runs it, checked with the tools users
//! check releases with: sha256sum, GNU tar + zstd, dpkg-deb, rpm.
//!
//! The main cache is the one `KATA_XTASK_CACHE_DIR` names (the test runner
//! passes the pipeline's cache, where the kernel is usually built), else
//! `target/cache`; a cold cache builds everything, which takes long.
//!
//! Reproducibility across clones (two releases from empty caches in
//! different directories) is `cargo xtask test repro` (xtask-test/src/repro.rs):
//! it builds whole clones and so runs from `cargo xtask test`, not here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn main_cache() -> PathBuf {
    match std::env::var_os("KATA_XTASK_CACHE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => root().join("target").join("cache"),
    }
}

fn xtask(args: &[&str], cache: &Path, dist: &Path) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(args)
        .arg("--cache-dir")
        .arg(cache)
        .arg("--dist-dir")
        .arg(dist)
        .current_dir(root())
        .output()
        .expect("run xtask");
    assert!(
        out.status.success(),
        "xtask {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "--json prints exactly one line on stdout, got:\n{text}"
    );
    serde_json::from_str(lines[0]).expect("stdout is JSON")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Artifact names by kind from `release --json`.
fn artifact(v: &serde_json::Value, kind: &str) -> String {
    v["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} artifact in {v}"))["name"]
        .as_str()
        .unwrap()
        .to_string()
}

const TREE: [&str; 11] = [
    "./opt/kata/VERSION",
    "./opt/kata/versions.yaml",
    "./opt/kata/bin/containerd-shim-kata-v2",
    "./opt/kata/bin/kata-runtime",
    "./opt/kata/bin/kata-monitor",
    "./opt/kata/libexec/vhost-device-vsock",
    "./opt/kata/share/defaults/kata-containers/configuration.toml",
    "./opt/kata/share/kata-containers/vmlinux.container",
    "./opt/kata/share/kata-containers/vmlinuz.container",
    "./opt/kata/share/kata-containers/kata-containers.img",
    "./opt/kata/share/kata-containers/kata-containers-initrd.img",
];

#[test]
#[ignore = "needs a whole release: the network, root and every host tool doctor installs: run by cargo xtask test unit"]
fn release_verifies_with_user_tools_and_reruns_from_cache() {
    let dist = tempfile::tempdir().unwrap();
    let cache = main_cache();
    let v = json(&xtask(&["release", "--json"], &cache, dist.path()));
    let d = dist.path();

    // Every checksum line matches the file next to it.
    let sums = run(Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(d));
    assert_eq!(
        sums.lines().filter(|l| l.ends_with(": OK")).count(),
        4,
        "tarball, deb, rpm, sbom:\n{sums}"
    );

    let tarball = d.join(artifact(&v, "tarball"));
    let listing = run(Command::new("tar").arg("--zstd").arg("-tf").arg(&tarball));
    for want in TREE {
        assert!(
            listing.lines().any(|l| l == want),
            "{want} missing from the tarball:\n{listing}"
        );
    }
    assert!(
        listing
            .lines()
            .all(|l| l == "./opt/" || l.starts_with("./opt/kata/")),
        "everything under /opt/kata:\n{listing}"
    );

    let deb = d.join(artifact(&v, "deb"));
    let deb_list = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for want in [
        "./opt/kata/bin/containerd-shim-kata-v2",
        "./opt/kata/libexec/vhost-device-vsock",
        "./opt/kata/share/kata-containers/vmlinux.container",
    ] {
        assert!(
            deb_list.contains(want),
            "{want} missing from the .deb:\n{deb_list}"
        );
    }

    // Debian policy as lintian checks it: no error or warning survives (the
    // package's overrides justify what it ships on purpose).
    let lint = Command::new("lintian")
        .args(["--fail-on", "error,warning", "--tag-display-limit", "0"])
        .arg(&deb)
        .output()
        .expect("run lintian");
    assert!(
        lint.status.success(),
        "lintian {} ({}):\n{}{}",
        deb.display(),
        lint.status,
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    let rpm = d.join(artifact(&v, "rpm"));
    let rpm_list = run(Command::new("rpm").arg("-qpl").arg(&rpm));
    for want in [
        "/opt/kata/bin/kata-runtime",
        "/opt/kata/share/defaults/kata-containers/configuration.toml",
    ] {
        assert!(
            rpm_list.lines().any(|l| l == want),
            "{want} missing from the .rpm:\n{rpm_list}"
        );
    }
    let rpm_check = run(Command::new("rpm").arg("-K").arg("--nosignature").arg(&rpm));
    assert!(rpm_check.contains("digests OK"), "rpm -K: {rpm_check}");

    // The SBOM lists the crates compiled into the shipped vhost-device-vsock
    // (from that crate's own lock file), not only this workspace's.
    let sbom: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join(artifact(&v, "sbom"))).unwrap())
            .unwrap();
    let listed = |name: &str| {
        sbom["packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == name)
    };
    assert!(
        listed("vhost-device-vsock") && listed("vhost-user-backend"),
        "vhost-device-vsock and its crates must be in the SBOM"
    );

    // The shipped configuration names the install prefix, not this clone.
    let config = std::fs::read_to_string(d.join(artifact(&v, "config"))).unwrap();
    assert!(
        config.contains("kernel = \"/opt/kata/share/kata-containers/vmlinux.container\""),
        "{config}"
    );
    assert!(
        !config.contains(root().to_str().unwrap()),
        "no build path in the config"
    );

    // An unchanged rerun plans nothing but cache hits.
    let plan = json(&xtask(
        &["release", "--dry-run", "--json"],
        &cache,
        dist.path(),
    ));
    let steps = plan["steps"].as_array().unwrap();
    let release = steps.iter().find(|s| s["id"] == "release").unwrap();
    assert_eq!(release["cached"], true, "{release}");
    for dep in [
        "kernel",
        "initrd:minimal:gzip",
        "image:minimal:ext4",
        "runtime-bins",
        "vhost-device-vsock",
    ] {
        assert!(
            release["deps"].as_array().unwrap().iter().any(|d| d == dep),
            "release depends on {dep}: {release}"
        );
    }
    let would_run: Vec<&serde_json::Value> = steps.iter().filter(|s| s["runs"] != false).collect();
    assert!(would_run.is_empty(), "a rerun would run: {would_run:?}");
}
