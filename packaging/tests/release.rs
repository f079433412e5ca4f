//! End-to-end checks of every release output with the tools users run on
//! them: GNU tar + zstd, dpkg-deb, dpkg, lintian, rpm, sha256sum, pyspdxtools.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use packaging::*;

const EPOCH: u64 = 1_735_689_600; // 2025-01-01T00:00:00Z
const VERSION: &str = "0.1.0-rc1";
const KERNEL: &str = "vmlinux-6.1.192-1";
const KERNELZ: &str = "vmlinuz-6.1.192-1";
const IMAGE: &str = "kata-containers-minimal-0.1.0.img";
const INITRD: &str = "kata-containers-initrd-minimal-0.1.0.img";

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    stdout + &stderr
}

/// A tiny static, stripped x86-64 executable (musl-gcc), standing in for the
/// static Rust binaries: lintian classifies it the same way. Built once per
/// test process so both reproducibility builds share the same bytes.
fn static_binary() -> &'static Path {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("packaging-test-bin-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("hello.c"),
            "#include <stdio.h>\nint main(void) { puts(\"kata\"); return 0; }\n",
        )
        .unwrap();
        let bin = dir.join("hello");
        let out = Command::new("musl-gcc")
            .args(["-static", "-s", "-O2", "-o"])
            .arg(&bin)
            .arg(dir.join("hello.c"))
            .output()
            .expect("musl-gcc must be installed (apt-get install musl-tools)");
        assert!(
            out.status.success(),
            "musl-gcc failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
}

/// Sources of a small but realistic release: a static binary for the shim,
/// runtime and helper, tiny files for kernels and images.
fn fixture(dir: &Path, touch_time: &str) -> ReleaseInputs {
    let src = dir.join("inputs");
    fs::create_dir_all(&src).unwrap();
    let busybox = fs::read(static_binary()).unwrap();
    let write = |name: &str, bytes: &[u8], mode: u32| {
        let p = src.join(name);
        fs::write(&p, bytes).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        // Different on-disk mtimes in each fixture: they must not leak into outputs.
        run(Command::new("touch").arg("-d").arg(touch_time).arg(&p));
        p
    };
    ReleaseInputs {
        version: VERSION.into(),
        source_date_epoch: EPOCH,
        prefix: "/opt/kata".into(),
        shim: write("shim", &busybox, 0o700),
        runtime: write("runtime", &[busybox.as_slice(), b"runtime"].concat(), 0o755),
        monitor: write("monitor", &[busybox.as_slice(), b"monitor"].concat(), 0o755),
        helpers: vec![("vhost-device-vsock".into(), write("vdv", &[busybox.as_slice(), b"vsock"].concat(), 0o755))],
        kernel_files: vec![
            (KERNEL.into(), write("vmlinux", b"fake vmlinux", 0o600)),
            (KERNELZ.into(), write("bzImage", b"MZ fake bzImage", 0o600)),
        ],
        kernel_symlinks: vec![("vmlinux.container".into(), KERNEL.into()), ("vmlinuz.container".into(), KERNELZ.into())],
        image_files: vec![
            (IMAGE.into(), write("image", &vec![0u8; 70_000], 0o600)),
            (INITRD.into(), write("initrd", b"\x1f\x8b fake initrd", 0o600)),
        ],
        image_symlinks: vec![
            ("kata-containers.img".into(), IMAGE.into()),
            ("kata-containers-initrd.img".into(), INITRD.into()),
        ],
        configuration_toml: render_configuration(
            "[hypervisor.qemu]\npath = \"/usr/bin/qemu-system-x86_64\"\nkernel = \"{{ prefix }}/share/kata-containers/vmlinux.container\"\n",
            "/opt/kata",
            &BTreeMap::new(),
        )
        .unwrap(),
        extra_configurations: Vec::new(),
        versions_yaml: write("versions.yaml", b"version: \"0.1.0-rc1\"\n", 0o600),
    }
}

struct Outputs {
    dist: PathBuf,
    tarball: PathBuf,
    deb: PathBuf,
    rpm: PathBuf,
    sbom: PathBuf,
    sums: PathBuf,
}

fn cargo_lock() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock")
}

fn pins() -> Vec<Pin> {
    vec![
        Pin {
            name: "linux-source-6.1".into(),
            version: "6.1.192-2".into(),
            download_location: "https://deb.debian.org/debian/pool/main/l/linux/linux-source-6.1_6.1.192-2_all.deb".into(),
            sha256: "ae95fe63d4c553f8d0e6c86cb1ab566f3894a43743eb19ab585cd97d82f26514".into(),
            purl: Some("pkg:deb/debian/linux-source-6.1@6.1.192-2?arch=all".into()),
        },
        Pin {
            name: "busybox-static".into(),
            version: "1:1.35.0-4+deb12u1+b1".into(),
            download_location: "https://deb.debian.org/debian/pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_amd64.deb".into(),
            sha256: "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744".into(),
            purl: Some("pkg:deb/debian/busybox-static@1:1.35.0-4%2Bdeb12u1%2Bb1?arch=amd64".into()),
        },
    ]
}

fn build_release(dir: &Path, touch_time: &str) -> Outputs {
    let inputs = fixture(dir, touch_time);
    let layout = Layout::from_inputs(&inputs).unwrap();
    let dist = dir.join("dist");
    let out = Outputs {
        tarball: dist.join(tarball_name(VERSION)),
        deb: dist.join(format!(
            "kata-containers-static_{}_amd64.deb",
            debian_version(VERSION).unwrap()
        )),
        rpm: dist.join(format!(
            "kata-containers-static-{}-1.x86_64.rpm",
            rpm_version(VERSION).unwrap()
        )),
        sbom: dist.join(format!("kata-static-{VERSION}.spdx.json")),
        sums: dist.join("SHA256SUMS"),
        dist,
    };
    write_tarball(&layout, &out.tarball, EPOCH).unwrap();
    let deb_meta = DebMeta::kata_static(
        VERSION,
        "Kata Containers release team <release@katacontainers.io>",
        EPOCH,
    )
    .unwrap();
    write_deb(&layout, &deb_meta, &out.deb, EPOCH).unwrap();
    write_rpm(
        &layout,
        &RpmMeta::kata_static(VERSION).unwrap(),
        &out.rpm,
        EPOCH,
    )
    .unwrap();
    let lock = cargo_lock();
    let sbom = SbomInputs {
        name: "kata-static".into(),
        version: VERSION.into(),
        pins: pins(),
        cargo_lock: &lock,
        helper_locks: vec![],
    };
    write_spdx_sbom(&sbom, &out.sbom, EPOCH).unwrap();
    write_sha256sums(&[&out.tarball, &out.deb, &out.rpm, &out.sbom], &out.sums).unwrap();
    out
}

const EXPECTED_FILES: [&str; 15] = [
    "./opt/kata/VERSION",
    "./opt/kata/bin/containerd-shim-kata-v2",
    "./opt/kata/bin/kata-runtime",
    "./opt/kata/bin/kata-monitor",
    "./opt/kata/libexec/vhost-device-vsock",
    "./opt/kata/share/defaults/kata-containers/configuration.toml",
    "./opt/kata/share/defaults/kata-containers/containerd-kata.toml",
    "./opt/kata/share/kata-containers/kata-containers-initrd-minimal-0.1.0.img",
    "./opt/kata/share/kata-containers/kata-containers-minimal-0.1.0.img",
    "./opt/kata/share/kata-containers/vmlinux-6.1.192-1",
    "./opt/kata/share/kata-containers/vmlinuz-6.1.192-1",
    "./opt/kata/share/kata-containers/kata-containers.img -> kata-containers-minimal-0.1.0.img",
    "./opt/kata/share/kata-containers/kata-containers-initrd.img -> kata-containers-initrd-minimal-0.1.0.img",
    "./opt/kata/share/kata-containers/vmlinux.container -> vmlinux-6.1.192-1",
    "./opt/kata/versions.yaml",
];

/// `tar -tv` lines: (mode, owner, date time, name-with-link).
fn tar_listing(tar_file: &Path, numeric: bool) -> Vec<(String, String, String, String)> {
    let mut cmd = Command::new("tar");
    cmd.env("TZ", "UTC")
        .arg("--full-time")
        .arg("-tvf")
        .arg(tar_file);
    if numeric {
        cmd.arg("--numeric-owner");
    }
    run(&mut cmd)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_string(),
                f[1].to_string(),
                format!("{} {}", f[3], f[4]),
                f[5..].join(" "),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs musl-gcc (musl-tools) for the fixture binary: run by cargo xtask test unit"]
fn tarball_is_sorted_root_owned_and_stamped_with_the_epoch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = build_release(tmp.path(), "2030-06-01 12:00");
    let plain = tmp.path().join("plain.tar");
    run(Command::new("zstd")
        .arg("-q")
        .arg("-d")
        .arg(&out.tarball)
        .arg("-o")
        .arg(&plain));
    let listing = tar_listing(&plain, false);
    let names: Vec<&str> = listing.iter().map(|l| l.3.as_str()).collect();
    assert_eq!(
        names[0], "./opt/",
        "upstream layout is ./opt/kata/...; got {names:?}"
    );
    let bare: Vec<&str> = names
        .iter()
        .map(|n| n.split(" -> ").next().unwrap())
        .collect();
    let mut sorted = bare.clone();
    sorted.sort();
    assert_eq!(bare, sorted, "entries must be sorted");
    for expected in EXPECTED_FILES {
        assert!(
            names.contains(&expected),
            "{expected} missing from {names:?}"
        );
    }
    for (mode, owner, date, name) in &listing {
        assert_eq!(owner, "root/root", "{name}");
        assert_eq!(date, "2025-01-01 00:00:00", "{name}");
        if name.ends_with('/') {
            assert_eq!(mode, "drwxr-xr-x", "{name}");
        }
    }
    let numeric = tar_listing(&plain, true);
    assert!(numeric.iter().all(|l| l.1 == "0/0"), "{numeric:?}");
    let mode_of = |n: &str| listing.iter().find(|l| l.3 == n).unwrap().0.clone();
    assert_eq!(mode_of("./opt/kata/bin/kata-runtime"), "-rwxr-xr-x");
    assert_eq!(
        mode_of("./opt/kata/share/kata-containers/vmlinux-6.1.192-1"),
        "-rw-r--r--"
    );

    // Extracted contents equal the inputs.
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    run(Command::new("tar")
        .arg("-xf")
        .arg(&plain)
        .arg("-C")
        .arg(&root));
    assert_eq!(
        fs::read(root.join("opt/kata/bin/containerd-shim-kata-v2")).unwrap(),
        fs::read(static_binary()).unwrap()
    );
    assert_eq!(
        fs::read_to_string(root.join("opt/kata/VERSION")).unwrap(),
        "0.1.0-rc1\n"
    );
    let conf =
        fs::read_to_string(root.join("opt/kata/share/defaults/kata-containers/configuration.toml"))
            .unwrap();
    assert!(
        conf.contains("kernel = \"/opt/kata/share/kata-containers/vmlinux.container\""),
        "{conf}"
    );
    assert_eq!(
        fs::read(root.join("opt/kata/share/kata-containers/vmlinux.container")).unwrap(),
        b"fake vmlinux",
        "the relative symlink resolves to the kernel"
    );
}

#[test]
#[ignore = "needs musl-gcc (musl-tools), dpkg and root (dpkg -i): run by cargo xtask test unit"]
fn deb_has_policy_metadata_and_installs_with_dpkg() {
    let tmp = tempfile::tempdir().unwrap();
    let out = build_release(tmp.path(), "2030-06-01 12:00");

    let info = run(Command::new("dpkg-deb").arg("-I").arg(&out.deb));
    for field in [
        "Package: kata-containers-static",
        "Version: 0.1.0~rc1-1",
        "Architecture: amd64",
        "Maintainer: Kata Containers release team <release@katacontainers.io>",
        "Depends: qemu-system-x86",
        "Section: admin",
        "Priority: optional",
        "Installed-Size: ",
        "Description: ",
    ] {
        assert!(
            info.contains(field),
            "{field} missing from dpkg-deb -I:\n{info}"
        );
    }
    assert!(
        !info.contains("postinst") && !info.contains("preinst"),
        "no maintainer scripts expected:\n{info}"
    );
    let contents = run(Command::new("dpkg-deb")
        .env("TZ", "UTC")
        .arg("-c")
        .arg(&out.deb));
    for l in contents.lines() {
        assert!(l.contains("root/root"), "{l}");
        assert!(l.contains("2025-01-01 00:00"), "{l}");
    }
    for p in [
        "./opt/kata/bin/containerd-shim-kata-v2",
        "./usr/share/doc/kata-containers-static/copyright",
        "./usr/share/doc/kata-containers-static/changelog.Debian.gz",
        "./usr/share/lintian/overrides/kata-containers-static",
        "./opt/kata/share/kata-containers/vmlinux.container -> vmlinux-6.1.192-1",
        "./opt/kata/share/defaults/kata-containers/containerd-kata.toml",
        "./usr/bin/containerd-shim-kata-v2 -> /opt/kata/bin/containerd-shim-kata-v2",
        "./usr/bin/kata-runtime -> /opt/kata/bin/kata-runtime",
        "./usr/bin/kata-monitor -> /opt/kata/bin/kata-monitor",
    ] {
        assert!(
            contents.contains(p),
            "{p} missing from dpkg-deb -c:\n{contents}"
        );
    }

    // Install into a private root with its own dpkg database; qemu is not in
    // that root, so the dependency is forced (it is declared, as checked above).
    let root = tmp.path().join("sysroot");
    let admin = root.join("var/lib/dpkg");
    fs::create_dir_all(admin.join("info")).unwrap();
    fs::create_dir_all(admin.join("updates")).unwrap();
    fs::write(admin.join("status"), "").unwrap();
    fs::write(admin.join("available"), "").unwrap();
    run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg("--log=/dev/null")
        .arg("--force-depends")
        .arg("-i")
        .arg(&out.deb));
    let status = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg("-s")
        .arg("kata-containers-static"));
    assert!(status.contains("Status: install ok installed"), "{status}");
    // dpkg --verify compares installed files with the package's md5sums.
    let verify = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg("--verify")
        .arg("kata-containers-static"));
    assert!(
        verify.trim().is_empty(),
        "dpkg --verify reports changes: {verify}"
    );
    assert_eq!(
        fs::read(root.join("opt/kata/libexec/vhost-device-vsock")).unwrap(),
        [fs::read(static_binary()).unwrap().as_slice(), b"vsock"].concat()
    );
    assert_eq!(
        fs::read_link(root.join("opt/kata/share/kata-containers/kata-containers.img")).unwrap(),
        Path::new(IMAGE)
    );
    // containerd finds the shim on PATH; the link resolves inside the root.
    assert_eq!(
        fs::read_link(root.join("usr/bin/containerd-shim-kata-v2")).unwrap(),
        Path::new("/opt/kata/bin/containerd-shim-kata-v2")
    );
    let snippet = fs::read_to_string(
        root.join("opt/kata/share/defaults/kata-containers/containerd-kata.toml"),
    )
    .unwrap();
    assert!(
        snippet.contains("runtime_type = \"io.containerd.kata.v2\"")
            && snippet.contains(
                "ConfigPath = \"/opt/kata/share/defaults/kata-containers/configuration.toml\""
            ),
        "{snippet}"
    );
    let gz = fs::File::open(root.join("usr/share/doc/kata-containers-static/changelog.Debian.gz"))
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(gz), &mut text).unwrap();
    assert!(
        text.starts_with("kata-containers-static (0.1.0~rc1-1) unstable; urgency=medium"),
        "{text}"
    );
    assert!(text.contains("  Wed, 01 Jan 2025 00:00:00 +0000"), "{text}");
}

/// Runs lintian on a .deb: no error or warning may remain (overrides apply;
/// `--show-overrides` is not used for the verdict because lintian then counts
/// overridden errors towards `--fail-on`). Info tags are printed for review.
fn assert_lintian_clean(deb: &Path) {
    let report = Command::new("lintian")
        .args([
            "--fail-on",
            "error,warning",
            "--display-info",
            "--tag-display-limit",
            "0",
        ])
        .arg(deb)
        .output()
        .expect("lintian must be installed (apt-get install lintian)");
    let text = String::from_utf8_lossy(&report.stdout).into_owned()
        + &String::from_utf8_lossy(&report.stderr);
    eprintln!("lintian {}:\n{text}", deb.display());
    assert!(
        report.status.success(),
        "lintian failed ({}):\n{text}",
        report.status
    );
    for line in text.lines() {
        assert!(
            !line.starts_with("E: ") && !line.starts_with("W: "),
            "unoverridden lintian finding: {line}"
        );
    }
    // Exit status ignored here: with --show-overrides, overridden errors count as failures.
    let overridden = Command::new("lintian")
        .arg("--show-overrides")
        .arg("--no-tag-display-limit")
        .arg(deb)
        .output()
        .unwrap();
    let overridden = String::from_utf8_lossy(&overridden.stdout);
    assert!(
        overridden.contains("O: kata-containers-static: dir-or-file-in-opt [opt/kata/]"),
        "{overridden}"
    );
}

#[test]
#[ignore = "needs musl-gcc (musl-tools) and lintian: run by cargo xtask test unit"]
fn lintian_reports_no_errors_or_warnings() {
    let tmp = tempfile::tempdir().unwrap();
    let out = build_release(tmp.path(), "2030-06-01 12:00");
    assert_lintian_clean(&out.deb);
}

/// The same checks on the project's real artifacts (static binaries, kernel,
/// 128 MiB image), which the fixture can only imitate. Needs built artifacts:
///   KATA_REAL_SHIM=… KATA_REAL_RUNTIME=… [KATA_REAL_MONITOR=…] KATA_REAL_DIST=target/dist \
///   cargo test -p packaging -- --ignored real_artifacts
#[test]
#[ignore = "needs built artifacts named by KATA_REAL_SHIM, KATA_REAL_RUNTIME, KATA_REAL_DIST"]
fn real_artifacts_pass_lintian_and_rpm() {
    let var = |k: &str| PathBuf::from(std::env::var(k).unwrap_or_else(|_| panic!("set {k}")));
    let (shim, runtime, dist) = (
        var("KATA_REAL_SHIM"),
        var("KATA_REAL_RUNTIME"),
        var("KATA_REAL_DIST"),
    );
    let tmp = tempfile::tempdir().unwrap();
    let mut inputs = fixture(tmp.path(), "2030-06-01 12:00");
    inputs.shim = shim;
    inputs.runtime = runtime;
    if let Ok(monitor) = std::env::var("KATA_REAL_MONITOR") {
        inputs.monitor = monitor.into();
    }
    inputs.kernel_files = vec![
        (KERNEL.into(), dist.join(KERNEL)),
        (KERNELZ.into(), dist.join(KERNELZ)),
    ];
    inputs.image_files = vec![
        (IMAGE.into(), dist.join("kata-minimal-0.1.0.image")),
        (INITRD.into(), dist.join("kata-minimal-0.1.0.initrd")),
    ];
    let layout = Layout::from_inputs(&inputs).unwrap();
    let deb = tmp.path().join("real.deb");
    let rpm_path = tmp.path().join("real.rpm");
    let tarball = tmp.path().join("real.tar.zst");
    let started = std::time::Instant::now();
    write_tarball(&layout, &tarball, EPOCH).unwrap();
    eprintln!(
        "tarball: {:?}, {} bytes",
        started.elapsed(),
        fs::metadata(&tarball).unwrap().len()
    );
    let started = std::time::Instant::now();
    write_deb(
        &layout,
        &DebMeta::kata_static(
            VERSION,
            "Kata Containers release team <release@katacontainers.io>",
            EPOCH,
        )
        .unwrap(),
        &deb,
        EPOCH,
    )
    .unwrap();
    eprintln!(
        "deb: {:?}, {} bytes",
        started.elapsed(),
        fs::metadata(&deb).unwrap().len()
    );
    let started = std::time::Instant::now();
    write_rpm(
        &layout,
        &RpmMeta::kata_static(VERSION).unwrap(),
        &rpm_path,
        EPOCH,
    )
    .unwrap();
    eprintln!(
        "rpm: {:?}, {} bytes",
        started.elapsed(),
        fs::metadata(&rpm_path).unwrap().len()
    );
    assert_lintian_clean(&deb);
    let k = run(Command::new("rpm").arg("-K").arg(&rpm_path));
    assert!(k.contains("digests OK"), "{k}");
}

#[test]
#[ignore = "needs musl-gcc (musl-tools) and rpm: run by cargo xtask test unit"]
fn rpm_is_accepted_by_rpm() {
    let tmp = tempfile::tempdir().unwrap();
    let out = build_release(tmp.path(), "2030-06-01 12:00");
    let k = run(Command::new("rpm").arg("-K").arg(&out.rpm));
    assert!(k.contains("digests OK"), "{k}");
    let list = run(Command::new("rpm").arg("-qpl").arg(&out.rpm));
    let files: Vec<&str> = list.lines().collect();
    for p in [
        "/opt/kata",
        "/opt/kata/bin/containerd-shim-kata-v2",
        "/opt/kata/bin/kata-runtime",
        "/opt/kata/libexec/vhost-device-vsock",
        "/opt/kata/share/kata-containers/vmlinux.container",
        "/opt/kata/share/defaults/kata-containers/configuration.toml",
        "/opt/kata/VERSION",
        "/opt/kata/versions.yaml",
        "/opt/kata/share/defaults/kata-containers/containerd-kata.toml",
        "/usr/bin/containerd-shim-kata-v2",
        "/usr/bin/kata-runtime",
        "/usr/bin/kata-monitor",
        "/opt/kata/bin/kata-monitor",
    ] {
        assert!(files.contains(&p), "{p} missing from rpm -qpl:\n{list}");
    }
    assert!(
        !files.contains(&"/usr/bin"),
        "/usr/bin belongs to the distribution, not this package"
    );
    assert!(
        !files.contains(&"/opt"),
        "/opt belongs to the distribution, not this package"
    );
    let info = run(Command::new("rpm")
        .env("TZ", "UTC")
        .arg("-qpi")
        .arg(&out.rpm));
    for field in [
        "kata-containers-static",
        "0.1.0~rc1",
        "x86_64",
        "Apache-2.0 AND GPL-2.0-only",
    ] {
        assert!(
            info.contains(field),
            "{field} missing from rpm -qpi:\n{info}"
        );
    }
    let q = run(Command::new("rpm").arg("-qp").arg("--qf").arg("%{BUILDTIME} %{BUILDHOST}\n[%{FILEMTIMES} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILEMODES:perms} %{FILENAMES} %{FILELINKTOS}\n]").arg(&out.rpm));
    let mut lines = q.lines();
    assert_eq!(
        lines.next().unwrap(),
        format!("{EPOCH} (none)"),
        "build time = epoch, no build host"
    );
    for l in lines {
        assert!(l.starts_with(&format!("{EPOCH} root:root ")), "{l}");
    }
    assert!(q.contains("lrwxrwxrwx /opt/kata/share/kata-containers/kata-containers.img kata-containers-minimal-0.1.0.img"), "{q}");
    assert!(
        q.contains("-rwxr-xr-x /opt/kata/bin/containerd-shim-kata-v2 "),
        "{q}"
    );
    let req = run(Command::new("rpm").arg("-qpR").arg(&out.rpm));
    assert!(req.contains("/usr/bin/qemu-system-x86_64"), "{req}");
}

#[test]
#[ignore = "needs musl-gcc (musl-tools) for the fixture binary: run by cargo xtask test unit"]
fn sha256sums_verify_with_sha256sum() {
    let tmp = tempfile::tempdir().unwrap();
    let out = build_release(tmp.path(), "2030-06-01 12:00");
    let text = fs::read_to_string(&out.sums).unwrap();
    assert_eq!(text.lines().count(), 4, "{text}");
    let check = run(Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&out.dist));
    assert_eq!(check.matches(": OK").count(), 4, "{check}");
    // A corrupted file is caught.
    let mut bytes = fs::read(&out.rpm).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    fs::write(&out.rpm, bytes).unwrap();
    let bad = Command::new("sha256sum")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&out.dist)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    // Files outside the checksum file's directory are refused.
    let err = write_sha256sums(&[tmp.path().join("inputs/shim")], &out.sums).unwrap_err();
    assert!(err.to_string().contains("is not under"), "{err:#}");
}

#[test]
#[ignore = "needs musl-gcc (musl-tools) and pyspdxtools: run by cargo xtask test unit"]
fn sbom_is_valid_spdx_and_lists_every_pin_and_crate() {
    let tmp = tempfile::tempdir().unwrap();
    let out = build_release(tmp.path(), "2030-06-01 12:00");
    let doc: serde_json::Value = serde_json::from_slice(&fs::read(&out.sbom).unwrap()).unwrap();
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    assert_eq!(doc["dataLicense"], "CC0-1.0");
    assert_eq!(doc["SPDXID"], "SPDXRef-DOCUMENT");
    assert_eq!(doc["creationInfo"]["created"], "2025-01-01T00:00:00Z");
    let ns = doc["documentNamespace"].as_str().unwrap();
    assert!(
        ns.starts_with("https://katacontainers.io/spdx/kata-static-0.1.0-rc1-"),
        "{ns}"
    );
    let packages = doc["packages"].as_array().unwrap();
    let find = |name: &str, version: &str| {
        packages
            .iter()
            .find(|p| p["name"] == name && p["versionInfo"] == version)
    };
    for pin in pins() {
        let p = find(&pin.name, &pin.version).unwrap_or_else(|| panic!("pin {} missing", pin.name));
        assert_eq!(p["checksums"][0]["algorithm"], "SHA256");
        assert_eq!(p["checksums"][0]["checksumValue"], pin.sha256.as_str());
        assert_eq!(p["downloadLocation"], pin.download_location.as_str());
    }
    // Every crate in Cargo.lock, registry ones with their .crate checksum and purl.
    let lock: toml::Value = toml::from_str(&fs::read_to_string(cargo_lock()).unwrap()).unwrap();
    let crates = lock["package"].as_array().unwrap();
    assert!(crates.len() > 50);
    for c in crates {
        let (name, version) = (c["name"].as_str().unwrap(), c["version"].as_str().unwrap());
        let p = find(name, version)
            .unwrap_or_else(|| panic!("crate {name} {version} missing from the SBOM"));
        if let Some(sum) = c.get("checksum") {
            assert_eq!(
                p["checksums"][0]["checksumValue"].as_str(),
                sum.as_str(),
                "{name}"
            );
            assert_eq!(
                p["externalRefs"][0]["referenceLocator"],
                format!("pkg:cargo/{name}@{version}")
            );
        }
    }
    let ids: std::collections::BTreeSet<&str> = packages
        .iter()
        .map(|p| p["SPDXID"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), packages.len(), "SPDXIDs must be unique");
    let rels = doc["relationships"].as_array().unwrap();
    assert_eq!(
        rels.iter()
            .filter(|r| r["relationshipType"] == "CONTAINS")
            .count(),
        packages.len() - 1
    );
    assert_eq!(
        rels.iter()
            .filter(|r| r["relationshipType"] == "DESCRIBES")
            .count(),
        1
    );

    // The reference validator (pip install spdx-tools).
    let v = Command::new("pyspdxtools")
        .arg("-i")
        .arg(&out.sbom)
        .output()
        .expect("pyspdxtools must be installed: pip install spdx-tools");
    let text =
        String::from_utf8_lossy(&v.stdout).into_owned() + &String::from_utf8_lossy(&v.stderr);
    assert!(
        v.status.success() && !text.contains("rror"),
        "pyspdxtools rejects the SBOM:\n{text}"
    );
}

#[test]
#[ignore = "needs musl-gcc (musl-tools) for the fixture binary: run by cargo xtask test unit"]
fn two_builds_from_different_directories_are_bit_identical() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    // Different directories, different on-disk mtimes, same contents.
    let out_a = build_release(&a.path().join("first/tree"), "2030-06-01 12:00");
    let out_b = build_release(&b.path().join("second"), "2001-02-03 04:05");
    for (x, y) in [
        (&out_a.tarball, &out_b.tarball),
        (&out_a.deb, &out_b.deb),
        (&out_a.rpm, &out_b.rpm),
        (&out_a.sbom, &out_b.sbom),
        (&out_a.sums, &out_b.sums),
    ] {
        assert_eq!(
            fs::read(x).unwrap(),
            fs::read(y).unwrap(),
            "{} differs between builds",
            x.file_name().unwrap().to_string_lossy()
        );
    }
    // And no temporary files were left next to the outputs.
    let names: Vec<String> = fs::read_dir(&out_a.dist)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
}

fn unsafe_layout(add: impl FnOnce(&mut Layout, &Path)) -> (tempfile::TempDir, Layout) {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    fs::write(&f, b"nameserver 1.1.1.1\n").unwrap();
    let mut layout = Layout::new("/opt/kata").unwrap();
    layout.add_file("bin/kata-runtime", &f, 0o755).unwrap();
    add(&mut layout, &f);
    (tmp, layout)
}

fn assert_all_writers_refuse(layout: &Layout, dir: &Path, expect: &str) {
    let dist = dir.join("dist");
    let deb_meta = DebMeta::kata_static("1.0", "A <a@example.org>", EPOCH).unwrap();
    let errors = [
        write_tarball(layout, &dist.join("t.tar.zst"), EPOCH).unwrap_err(),
        write_deb(layout, &deb_meta, &dist.join("p.deb"), EPOCH).unwrap_err(),
        write_rpm(
            layout,
            &RpmMeta::kata_static("1.0").unwrap(),
            &dist.join("p.rpm"),
            EPOCH,
        )
        .unwrap_err(),
    ];
    for e in errors {
        assert!(format!("{e:#}").contains(expect), "{e:#}");
    }
    assert!(
        !dist.exists() || fs::read_dir(&dist).unwrap().next().is_none(),
        "nothing may be written"
    );
}

#[test]
fn layouts_that_would_damage_a_host_are_refused() {
    let (tmp, layout) = unsafe_layout(|l, f| l.add_file("etc/resolv.conf", f, 0o644).unwrap());
    assert_all_writers_refuse(&layout, tmp.path(), "host identity file");
    let (tmp, layout) = unsafe_layout(|l, _| l.add_symlink("etc", "/etc").unwrap());
    assert_all_writers_refuse(&layout, tmp.path(), "points outside the prefix");
    let (tmp, layout) =
        unsafe_layout(|l, _| l.add_symlink("share/x", "../../../etc/hosts").unwrap());
    assert_all_writers_refuse(&layout, tmp.path(), "points outside the prefix");
}

#[test]
#[ignore = "needs musl-gcc (musl-tools) for the fixture binary: run by cargo xtask test unit"]
fn hostile_archives_made_by_other_tools_are_caught_on_read_back() {
    let tmp = tempfile::tempdir().unwrap();
    // A tree with everything the check forbids, packed by GNU tar and dpkg-deb.
    let tree = tmp.path().join("tree");
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::create_dir_all(tree.join("opt/kata/bin")).unwrap();
    fs::create_dir_all(tree.join("proc")).unwrap();
    fs::write(tree.join("etc/resolv.conf"), "nameserver 1.1.1.1\n").unwrap();
    std::os::unix::fs::symlink("/etc/shadow", tree.join("opt/kata/bin/evil")).unwrap();
    let tar = tmp.path().join("hostile.tar");
    run(Command::new("tar")
        .arg("-C")
        .arg(&tree)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    run(Command::new("zstd")
        .arg("-q")
        .arg(&tar)
        .arg("-o")
        .arg(tmp.path().join("hostile.tar.zst")));
    let err = check_host_safety_tarball(&tmp.path().join("hostile.tar.zst"), "/opt/kata")
        .unwrap_err()
        .to_string();
    for needle in [
        "./etc/resolv.conf",
        "./proc/",
        "./opt/kata/bin/evil: symlink to \"/etc/shadow\" points outside",
    ] {
        assert!(err.contains(needle), "{needle} not reported: {err}");
    }

    fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    fs::write(
        tree.join("DEBIAN/control"),
        "Package: hostile\nVersion: 1\nArchitecture: amd64\nMaintainer: A <a@example.org>\nDescription: x\n",
    )
    .unwrap();
    let deb = tmp.path().join("hostile.deb");
    run(Command::new("dpkg-deb")
        .arg("--root-owner-group")
        .arg("--build")
        .arg(&tree)
        .arg(&deb));
    let err = check_host_safety_deb(&deb, "/opt/kata")
        .unwrap_err()
        .to_string();
    for needle in ["./etc/resolv.conf", "./proc/", "points outside"] {
        assert!(err.contains(needle), "{needle} not reported: {err}");
    }

    // The real outputs of a release pass the same read-back checks.
    let out = build_release(&tmp.path().join("ok"), "2030-06-01 12:00");
    check_host_safety_tarball(&out.tarball, "/opt/kata").unwrap();
    check_host_safety_deb(&out.deb, "/opt/kata").unwrap();
    check_host_safety_rpm(&out.rpm, "/opt/kata").unwrap();
}

#[test]
fn configuration_template_errors_name_the_problem() {
    let mut extra = BTreeMap::new();
    extra.insert("default_memory".to_string(), "2048".to_string());
    let ok = render_configuration("[hypervisor.qemu]\nkernel = \"{{ prefix }}/share/kata-containers/vmlinux.container\"\ndefault_memory = {{ default_memory }}\n", "/usr/local/kata/", &extra).unwrap();
    assert_eq!(ok, "[hypervisor.qemu]\nkernel = \"/usr/local/kata/share/kata-containers/vmlinux.container\"\ndefault_memory = 2048\n");
    let undefined = render_configuration("x = \"{{ nope }}\"\n", "/opt/kata", &extra).unwrap_err();
    assert!(format!("{undefined:#}").contains("nope"), "{undefined:#}");
    let not_toml = render_configuration("[hypervisor.qemu\n", "/opt/kata", &extra).unwrap_err();
    assert!(
        format!("{not_toml:#}").contains("not valid TOML"),
        "{not_toml:#}"
    );
    assert!(render_configuration("x = 1\n", "opt/kata", &extra).is_err());
}

#[test]
#[ignore = "needs musl-gcc (musl-tools) for the fixture binary: run by cargo xtask test unit"]
fn release_inputs_are_validated() {
    let tmp = tempfile::tempdir().unwrap();
    let mut inputs = fixture(tmp.path(), "2030-06-01 12:00");
    inputs
        .kernel_symlinks
        .push(("vmlinux-debug.container".into(), "vmlinux-missing".into()));
    let err = Layout::from_inputs(&inputs).unwrap_err();
    assert!(format!("{err:#}").contains("would dangle"), "{err:#}");
    let mut inputs = fixture(tmp.path(), "2030-06-01 12:00");
    inputs.shim = tmp.path().join("nope");
    let err = Layout::from_inputs(&inputs).unwrap_err();
    assert!(
        format!("{err:#}").contains("release input `shim`"),
        "{err:#}"
    );
    let mut inputs = fixture(tmp.path(), "2030-06-01 12:00");
    inputs
        .helpers
        .push(("../escape".into(), tmp.path().join("inputs/shim")));
    assert!(Layout::from_inputs(&inputs).is_err());
    // Another guest's configuration lands next to configuration.toml.
    let mut inputs = fixture(tmp.path(), "2030-06-01 12:00");
    inputs
        .extra_configurations
        .push(("configuration-debian.toml".into(), "x = 1\n".into()));
    let layout = Layout::from_inputs(&inputs).unwrap();
    assert!(layout
        .entries()
        .any(|(p, _)| p == "share/defaults/kata-containers/configuration-debian.toml"));
    for bad in [
        "debian.toml",
        "configuration-debian",
        "../configuration-x.toml",
    ] {
        let mut inputs = fixture(tmp.path(), "2030-06-01 12:00");
        inputs
            .extra_configurations
            .push((bad.into(), "x = 1\n".into()));
        let err = Layout::from_inputs(&inputs).unwrap_err();
        assert!(
            format!("{err:#}").contains("release input `extra_configurations`"),
            "{bad}: {err:#}"
        );
    }
    let mut inputs = fixture(tmp.path(), "2030-06-01 12:00");
    inputs
        .extra_configurations
        .push(("configuration.toml".into(), "x = 1\n".into()));
    assert!(
        Layout::from_inputs(&inputs).is_err(),
        "the default one twice"
    );
}
