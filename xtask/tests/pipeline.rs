//! The pipeline as a user runs it: the real `xtask` binary, real apt-get,
//! mke2fs, cpio, e2fsck. Checks of the artifacts use independent tools or
//! code written here from the kernel's documented layouts, never the
//! builder's own decoders.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn xtask(args: &[&str], envs: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.args(args).current_dir(root());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run xtask")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn error_lines(o: &Output) -> Vec<String> {
    stderr(o)
        .lines()
        .filter(|l| l.starts_with("error:"))
        .map(str::to_string)
        .collect()
}

/// Asserts: exit 2, exactly one `error:` line, containing every needle.
fn assert_bad_input(o: &Output, needles: &[&str]) {
    assert_eq!(
        o.status.code(),
        Some(2),
        "want exit 2, stderr: {}",
        stderr(o)
    );
    let errs = error_lines(o);
    assert_eq!(errs.len(), 1, "one error line: {}", stderr(o));
    for n in needles {
        assert!(errs[0].contains(n), "`{n}` missing in: {}", errs[0]);
    }
}

fn versions_text() -> String {
    std::fs::read_to_string(root().join("versions.yaml")).unwrap()
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn malformed_versions_file_is_one_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("v.yaml");
    std::fs::write(&f, "version: \"0.1.0\"\nkernel: [oops\n").unwrap();
    let o = xtask(&["versions", "--versions", f.to_str().unwrap()], &[]);
    assert_bad_input(&o, &[f.to_str().unwrap()]);
}

#[test]
fn missing_agent_bin_is_one_clear_error_before_any_step() {
    let d = tempfile::tempdir().unwrap();
    let missing = d.path().join("kata-agent");
    let cache = d.path().join("cache");
    let o = xtask(
        &[
            "--agent-bin",
            missing.to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--dry-run",
            "initrd",
            "--recipe",
            "minimal",
        ],
        &[],
    );
    assert_bad_input(
        &o,
        &[
            "--agent-bin",
            missing.to_str().unwrap(),
            "cargo xtask agent",
        ],
    );
}

#[test]
fn unknown_key_names_path_and_line() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("v.yaml");
    std::fs::write(
        &f,
        versions_text().replace("busybox:\n", "busybox:\n  flavor: static\n"),
    )
    .unwrap();
    let o = xtask(&["versions", "--versions", f.to_str().unwrap()], &[]);
    assert_bad_input(&o, &["busybox", "unknown field `flavor`"]);
}

#[test]
fn unknown_recipe_lists_the_known_ones() {
    let o = xtask(&["rootfs", "--recipe", "no-such-recipe", "--dry-run"], &[]);
    assert_bad_input(&o, &["no-such-recipe", "minimal"]);
}

#[test]
fn release_recipes_are_checked_and_planned() {
    let o = xtask(&["release", "--recipes", "debian", "--dry-run"], &[]);
    assert_bad_input(
        &o,
        &["--recipes debian", "`minimal`", "--recipes minimal,debian"],
    );
    let o = xtask(
        &["release", "--recipes", "minimal,minimal", "--dry-run"],
        &[],
    );
    assert_bad_input(&o, &["minimal is listed twice"]);
    let o = xtask(
        &["release", "--recipes", "minimal,no-such", "--dry-run"],
        &[],
    );
    assert_bad_input(&o, &["no-such", "debian", "minimal"]);
    let o = xtask(
        &[
            "--json",
            "--dry-run",
            "release",
            "--recipes",
            "minimal,debian",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let steps = plan["steps"].as_array().unwrap();
    let release = steps.iter().find(|s| s["id"] == "release").unwrap();
    let deps: Vec<&str> = release["deps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(deps.contains(&"image:debian:ext4"), "{deps:?}");
    assert!(steps.iter().any(|s| s["id"] == "rootfs:debian"), "{plan}");
}

#[test]
fn missing_host_tool_names_tool_and_package() {
    let empty = tempfile::tempdir().unwrap();
    let o = xtask(
        &["image", "--recipe", "minimal"],
        &[("PATH", empty.path()), ("HOME", empty.path())],
    );
    assert_bad_input(&o, &["mke2fs", "e2fsprogs"]);
}

#[test]
fn unwritable_output_dirs_are_refused_before_any_work() {
    let cache = tempfile::tempdir().unwrap();
    let o = xtask(
        &[
            "initrd",
            "--recipe",
            "minimal",
            "--dist-dir",
            "/proc/kata-no-such-dir",
        ],
        &[("KATA_XTASK_CACHE_DIR", cache.path())],
    );
    assert_bad_input(&o, &["/proc/kata-no-such-dir", "--dist-dir"]);
    assert!(!cache.path().join("steps").exists(), "no step ran");

    let dist = tempfile::tempdir().unwrap();
    let o = xtask(
        &[
            "initrd",
            "--recipe",
            "minimal",
            "--cache-dir",
            "/proc/kata-no-such-dir",
        ],
        &[("KATA_XTASK_DIST_DIR", dist.path())],
    );
    assert_bad_input(&o, &["/proc/kata-no-such-dir", "--cache-dir"]);
}

#[test]
#[ignore = "needs apt-get and the network: run by cargo xtask test unit"]
fn digest_mismatch_fails_closed_and_stores_nothing() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("v.yaml");
    let real = "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744";
    let text = versions_text();
    assert!(text.contains(real), "test needs the busybox pin");
    std::fs::write(&f, text.replace(real, &"0".repeat(64))).unwrap();
    let cache = d.path().join("cache");
    let dist = d.path().join("dist");
    let o = xtask(
        &[
            "rootfs",
            "--recipe",
            "minimal",
            "--versions",
            f.to_str().unwrap(),
        ],
        &[
            ("KATA_XTASK_CACHE_DIR", &cache),
            ("KATA_XTASK_DIST_DIR", &dist),
        ],
    );
    assert_bad_input(&o, &["busybox.debian.sha256", real]);
    let stored = std::fs::read_dir(cache.join("inputs"))
        .map(|r| r.count())
        .unwrap_or(0);
    assert_eq!(stored, 0, "nothing unverified may enter the cache");
    assert!(!dist.join("manifest.json").exists());
}

#[test]
fn offline_says_what_is_missing() {
    let d = tempfile::tempdir().unwrap();
    let o = xtask(
        &["rootfs", "--recipe", "minimal", "--offline"],
        &[
            ("KATA_XTASK_CACHE_DIR", &d.path().join("c")),
            ("KATA_XTASK_DIST_DIR", &d.path().join("d")),
        ],
    );
    assert_bad_input(&o, &["--offline", "busybox-static"]);
}

struct Built {
    _dir: tempfile::TempDir,
    cache: PathBuf,
    dist_a: PathBuf,
    dist_b: PathBuf,
}

/// Two builds of initrd and image from two empty caches (shared by the
/// tests below: the build is the expensive part).
fn built() -> &'static Built {
    static B: OnceLock<Built> = OnceLock::new();
    B.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        remove_at_exit(dir.path());
        let mut dists = Vec::new();
        for run in ["a", "b"] {
            let cache = dir.path().join(format!("cache-{run}"));
            let dist = dir.path().join(format!("dist-{run}"));
            for cmd in ["initrd", "image"] {
                let o = xtask(
                    &[cmd, "--recipe", "minimal"],
                    &[
                        ("KATA_XTASK_CACHE_DIR", &cache),
                        ("KATA_XTASK_DIST_DIR", &dist),
                    ],
                );
                assert!(o.status.success(), "{cmd} failed: {}", stderr(&o));
            }
            dists.push(dist);
        }
        Built {
            cache: dir.path().join("cache-a"),
            dist_b: dists.pop().unwrap(),
            dist_a: dists.pop().unwrap(),
            _dir: dir,
        }
    })
}

/// A static is never dropped, so the shared build's temp dir would stay
/// behind (346 MB a run): it is removed when the test process exits.
fn remove_at_exit(dir: &Path) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn remove() {
        if let Some(dir) = DIR.get() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    if DIR.set(dir.to_path_buf()).is_ok() {
        // SAFETY: `remove` is an `extern "C" fn()` as atexit wants; it
        // only reads DIR, which is set before it is registered.
        let rc = unsafe { libc::atexit(remove) };
        assert_eq!(rc, 0, "atexit");
    }
}

#[test]
#[ignore = "needs apt-get, the network, the musl target, mke2fs and cpio (real initrd and image builds): run by cargo xtask test unit"]
fn two_builds_from_empty_caches_are_bit_identical() {
    let b = built();
    for name in ["kata-containers-initrd.img", "kata-containers.img"] {
        let a = sha256(&b.dist_a.join(name));
        assert_eq!(
            a,
            sha256(&b.dist_b.join(name)),
            "{name} differs between two clean builds"
        );
    }
}

#[test]
#[ignore = "needs apt-get, the network, the musl target, mke2fs and cpio (real initrd and image builds): run by cargo xtask test unit"]
fn unchanged_rerun_is_all_cache_hits() {
    let b = built();
    for cmd in ["initrd", "image"] {
        let o = xtask(
            &[cmd, "--recipe", "minimal", "--dry-run", "--json"],
            &[
                ("KATA_XTASK_CACHE_DIR", &b.cache),
                ("KATA_XTASK_DIST_DIR", &b.dist_a),
            ],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let steps = plan["steps"].as_array().unwrap();
        assert!(steps.len() >= 4, "unpack, agent, rootfs and {cmd}: {plan}");
        let target = steps.last().unwrap();
        assert!(target["id"].as_str().unwrap().starts_with(cmd), "{plan}");
        assert_eq!(target["cached"], true, "{cmd}: {plan}");
        for s in steps {
            assert_eq!(s["runs"], false, "{cmd}: step {} would run again", s["id"]);
            assert_eq!(s["cache_key"].as_str().unwrap().len(), 64, "{s}");
        }
    }
}

#[test]
#[ignore = "needs apt-get, the network, the musl target, mke2fs and cpio (real initrd and image builds): run by cargo xtask test unit"]
fn manifest_lists_the_artifacts_with_their_digests() {
    let b = built();
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.dist_a.join("manifest.json")).unwrap()).unwrap();
    for (name, kind) in [
        ("kata-containers-initrd.img", "initrd"),
        ("kata-containers.img", "image"),
    ] {
        let a = m["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .expect(name);
        assert_eq!(a["kind"], kind);
        assert_eq!(a["recipe"], "minimal");
        let path = root().join(a["path"].as_str().unwrap());
        assert_eq!(a["sha256"], sha256(&path));
        assert_eq!(a["bytes"], std::fs::metadata(&path).unwrap().len());
    }
}

#[test]
#[ignore = "needs apt-get, the network, the musl target, mke2fs and cpio (real initrd and image builds): run by cargo xtask test unit"]
fn gnu_cpio_lists_the_initrd() {
    let b = built();
    let initrd = b.dist_a.join("kata-containers-initrd.img");
    let gz = Command::new("gzip")
        .arg("-dc")
        .arg(&initrd)
        .output()
        .unwrap();
    assert!(gz.status.success());
    let mut child = Command::new("cpio")
        .args(["-t", "-v", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(&gz.stdout).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let listing = String::from_utf8_lossy(&out.stdout);
    for want in [
        " init -> ",
        " sbin/init -> ",
        " bin/busybox",
        " dev/console",
        " var/lib/osbuilder/osbuilder.yaml",
    ] {
        assert!(
            listing.contains(want),
            "`{want}` not in cpio listing:\n{listing}"
        );
    }
    // owner 0:0 everywhere
    for line in listing.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((f[2], f[3]), ("root", "root"), "{line}");
    }
}

fn u32le(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

/// (start LBA, sectors) of MBR partition 1 at `base`.
fn mbr_partition(img: &[u8], base: usize) -> (u64, u64) {
    assert_eq!(
        &img[base + 510..base + 512],
        &[0x55, 0xAA],
        "MBR signature at {base:#x}"
    );
    let e = base + 446;
    (u32le(img, e + 8) as u64, u32le(img, e + 12) as u64)
}

/// The kernel's nd_fletcher64 (drivers/nvdimm/core.c), over u32 words.
fn fletcher64(data: &[u8]) -> u64 {
    let mut lo: u32 = 0;
    let mut hi: u64 = 0;
    for w in data.chunks_exact(4) {
        lo = lo.wrapping_add(u32::from_le_bytes(w.try_into().unwrap()));
        hi = hi.wrapping_add(lo as u64);
    }
    (hi << 32) | lo as u64
}

#[test]
#[ignore = "needs apt-get, the network, the musl target, mke2fs and cpio (real initrd and image builds): run by cargo xtask test unit"]
fn dax_image_layout_matches_the_design() {
    const MIB: u64 = 1 << 20;
    let b = built();
    let img = std::fs::read(b.dist_a.join("kata-containers.img")).unwrap();
    assert_eq!(img.len() as u64 % (128 * MIB), 0, "size aligned to 128 MiB");
    // Outer MBR: the partition at 3 MiB (2 MiB header + the image's 1 MiB).
    let (outer_start, outer_len) = mbr_partition(&img, 0);
    assert_eq!(outer_start * 512, 3 * MIB);
    // The image's own MBR at 2 MiB: partition at 1 MiB of the image.
    let (inner_start, inner_len) = mbr_partition(&img, 2 * MIB as usize);
    assert_eq!(inner_start * 512, MIB);
    assert_eq!(outer_len, inner_len);
    // pfn info block at 4 KiB (struct nd_pfn_sb, 4096 bytes).
    let sb = &img[4096..8192];
    assert_eq!(&sb[0..16], b"NVDIMM_PFN_INFO\0");
    let le16 = |o: usize| u16::from_le_bytes(sb[o..o + 2].try_into().unwrap());
    let le64 = |o: usize| u64::from_le_bytes(sb[o..o + 8].try_into().unwrap());
    assert_eq!(le16(52), 1, "version_major");
    assert_eq!(le64(56), 2 * MIB, "dataoff");
    assert_eq!(u32le(sb, 72), 1, "mode PFN_MODE_RAM");
    assert_eq!(u32le(sb, 84), 2 * MIB as u32, "align");
    let mut zeroed = sb.to_vec();
    zeroed[4088..4096].fill(0);
    assert_eq!(le64(4088), fletcher64(&zeroed), "checksum");
    // e2fsck on the partition as the first MBR describes it.
    let part = tempfile::NamedTempFile::new().unwrap();
    let start = (outer_start * 512) as usize;
    std::fs::write(part.path(), &img[start..start + (outer_len * 512) as usize]).unwrap();
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(part.path())
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
}

#[test]
#[ignore = "needs apt-get, the network, the musl target, mke2fs and cpio (real initrd and image builds): run by cargo xtask test unit"]
fn agent_is_a_static_musl_executable() {
    built();
    let agent = root().join("target/agent/x86_64-unknown-linux-musl/agent/kata-agent");
    let out = Command::new("readelf")
        .args(["-l", "-d"])
        .arg(&agent)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("program interpreter"), "dynamic: {text}");
    assert!(!text.contains("(NEEDED)"), "needs libraries: {text}");
    // musl leaves its mark in the binary; glibc's static builds say GLIBC.
    let bytes = std::fs::read(&agent).unwrap();
    assert!(
        !bytes.windows(6).any(|w| w == b"GLIBC_"),
        "glibc symbols in the agent"
    );
}

#[test]
#[ignore = "needs apt-get (a Debian host): run by cargo xtask test unit"]
fn a_pin_the_archive_dropped_names_the_fix() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("v.yaml");
    let text = versions_text().replace(
        "version: \"1:1.35.0-4+deb12u1+b1\"",
        "version: \"1:1.35.0-0+gone1\"",
    );
    std::fs::write(&f, text).unwrap();
    let o = xtask(
        &[
            "rootfs",
            "--recipe",
            "minimal",
            "--versions",
            f.to_str().unwrap(),
        ],
        &[
            ("KATA_XTASK_CACHE_DIR", &d.path().join("c")),
            ("KATA_XTASK_DIST_DIR", &d.path().join("d")),
        ],
    );
    assert_bad_input(
        &o,
        &[
            "busybox-static=1:1.35.0-0+gone1",
            "cargo xtask versions --update busybox",
        ],
    );
}

/// A copy of this checkout's tracked files, for a test that changes a
/// recipe or lock (xtask reads them from `KATA_XTASK_ROOT`).
fn checkout_copy(into: &Path) -> PathBuf {
    let copy = into.join("src");
    let files = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(files.status.success(), "git ls-files: {}", stderr(&files));
    for name in files.stdout.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let rel = Path::new(std::str::from_utf8(name).unwrap());
        let from = root().join(rel);
        if !from.is_file() {
            continue;
        }
        let to = copy.join(rel);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
    }
    copy
}

#[test]
#[ignore = "needs apt-get (a Debian host): run by cargo xtask test unit"]
fn an_unknown_package_in_a_recipe_is_named() {
    let d = tempfile::tempdir().unwrap();
    let src = checkout_copy(d.path());
    let recipe = src.join("image-recipes/typo.yaml");
    let text = std::fs::read_to_string(src.join("image-recipes/minimal.yaml"))
        .unwrap()
        .replace("name: minimal", "name: typo")
        .replace(
            "install: [iptables]",
            "install: [iptables, no-such-package-kata-xtask]",
        );
    assert!(text.contains("no-such-package-kata-xtask"), "{text}");
    std::fs::write(&recipe, text).unwrap();
    let o = xtask(
        &["versions", "--update", "recipe:typo"],
        &[
            ("KATA_XTASK_ROOT", &src),
            ("KATA_XTASK_CACHE_DIR", &d.path().join("c")),
            ("KATA_XTASK_DIST_DIR", &d.path().join("d")),
        ],
    );
    assert_bad_input(
        &o,
        &[
            "image-recipes/typo.yaml",
            "packages.install: no-such-package-kata-xtask",
        ],
    );
    assert!(
        !src.join("image-recipes/typo.lock").exists(),
        "no lock may be written for a recipe that does not resolve"
    );
}

#[test]
#[ignore = "needs apt-get, the network, the musl target, mke2fs and cpio (real initrd and image builds): run by cargo xtask test unit"]
fn a_locked_version_the_archive_lacks_is_named_and_nothing_is_built() {
    let b = built();
    let d = tempfile::tempdir().unwrap();
    let cache = cache_copy(b, d.path());
    let src = checkout_copy(d.path());
    let lock = src.join("image-recipes/minimal.lock");
    let text = std::fs::read_to_string(&lock).unwrap();
    // A version Debian never published, with a digest nothing in the cache
    // has: the rootfs step must ask the archive, and the archive says no.
    let (at, _) = text.match_indices("- name: iptables\n").next().unwrap();
    let version_line = text[at..].lines().nth(1).unwrap().to_string();
    let sha_line = text[at..].lines().nth(2).unwrap().to_string();
    let bogus = text
        .replacen(&version_line, "  version: 1.8.9-0+gone1", 1)
        .replacen(&sha_line, &format!("  sha256: {}", "ab".repeat(32)), 1);
    std::fs::write(&lock, bogus).unwrap();
    let dist = d.path().join("dist");
    let o = xtask(
        &["rootfs", "--recipe", "minimal"],
        &[
            ("KATA_XTASK_ROOT", &src),
            ("KATA_XTASK_CACHE_DIR", &cache),
            ("KATA_XTASK_DIST_DIR", &dist),
        ],
    );
    assert_bad_input(
        &o,
        &[
            "recipe:minimal",
            "iptables=1.8.9-0+gone1",
            "cargo xtask versions --update recipe:minimal",
        ],
    );
    let published: Vec<_> = std::fs::read_dir(&dist)
        .map(|r| r.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        published.is_empty(),
        "nothing may be published: {published:?}"
    );
}

#[test]
#[ignore = "needs apt-get and the network: run by cargo xtask test unit"]
fn update_repins_to_what_the_archive_serves_and_keeps_comments() {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("v.yaml");
    let stale = versions_text()
        .replace(
            "version: \"1:1.35.0-4+deb12u1+b1\"",
            "version: \"1:1.35.0-0+gone1\"",
        )
        .replace(
            "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744",
            &"1".repeat(64),
        );
    std::fs::write(&f, &stale).unwrap();
    let o = xtask(
        &[
            "versions",
            "--update",
            "busybox",
            "--versions",
            f.to_str().unwrap(),
        ],
        &[("KATA_XTASK_CACHE_DIR", &d.path().join("c"))],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let updated = std::fs::read_to_string(&f).unwrap();
    let comments = |t: &str| {
        t.lines()
            .filter(|l| l.trim_start().starts_with('#'))
            .count()
    };
    assert_eq!(comments(&updated), comments(&stale), "comments kept");
    // What the archive serves now, independently of xtask.
    let policy = Command::new("apt-cache")
        .args(["policy", "busybox-static"])
        .output()
        .unwrap();
    let candidate = String::from_utf8_lossy(&policy.stdout)
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Candidate:")
                .map(|v| v.trim().to_string())
        })
        .unwrap();
    assert!(
        updated.contains(&format!("version: \"{candidate}\"")),
        "{updated}"
    );
    assert!(!updated.contains(&"1".repeat(64)), "sha256 re-pinned");
    // The pinned digest is that of the package apt serves, fetched here
    // independently.
    let dl = d.path().join("dl");
    std::fs::create_dir(&dl).unwrap();
    let got = Command::new("apt-get")
        .args(["download", &format!("busybox-static={candidate}")])
        .current_dir(&dl)
        .output()
        .unwrap();
    assert!(got.status.success());
    let deb = std::fs::read_dir(&dl)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    assert!(
        updated.contains(&format!("sha256: {}", sha256(&deb))),
        "{updated}"
    );
}

/// The one entry dir of `step` in a cache (these caches built one of each).
fn only_entry(cache: &Path, step: &str) -> PathBuf {
    let dirs: Vec<PathBuf> = std::fs::read_dir(cache.join("steps").join(step))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(dirs.len(), 1, "{step}: {dirs:?}");
    dirs.into_iter().next().unwrap()
}

fn flip_a_byte(path: &Path) {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let at = f.metadata().unwrap().len() / 2;
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[b[0] ^ 0x5a]).unwrap();
}

#[test]
#[ignore = "needs apt-get, the network, the musl target, mke2fs and cpio (real initrd and image builds): run by cargo xtask test unit"]
fn corrupted_cache_entries_and_downloads_are_rebuilt_never_published() {
    use std::os::unix::fs::MetadataExt;
    let b = built();
    let d = tempfile::tempdir().unwrap();
    let cache = d.path().join("cache");
    let dist = d.path().join("dist");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&b.cache)
        .arg(&cache)
        .status()
        .unwrap();
    assert!(cp.success());
    let clean_agent = sha256(&only_entry(&b.cache, "agent").join("kata-agent"));
    flip_a_byte(&only_entry(&cache, "agent").join("kata-agent"));
    flip_a_byte(&only_entry(&cache, "initrd").join("initrd"));
    let busybox_sha = "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744";
    let stored = std::fs::read_dir(cache.join("inputs").join(busybox_sha))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    flip_a_byte(&stored);
    // Without its rootfs and unpacked busybox, the initrd needs the
    // corrupted download again.
    for step in ["rootfs", "unpack"] {
        std::fs::remove_dir_all(cache.join("steps").join(step)).unwrap();
    }
    let envs = [
        ("KATA_XTASK_CACHE_DIR", cache.as_path()),
        ("KATA_XTASK_DIST_DIR", dist.as_path()),
    ];
    let o = xtask(&["initrd", "--recipe", "minimal"], &envs);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("initrd does not match the entry's seal"),
        "{}",
        stderr(&o)
    );
    assert_eq!(
        sha256(&dist.join("kata-containers-initrd.img")),
        sha256(&b.dist_a.join("kata-containers-initrd.img")),
        "the published initrd is a clean build's"
    );
    assert_eq!(
        sha256(&stored),
        busybox_sha,
        "the download was fetched again"
    );
    let o = xtask(&["agent"], &envs);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(sha256(&dist.join("kata-agent")), clean_agent);
    // Published files are copies: nothing done to dist reaches the cache.
    for (published, step, file) in [
        ("kata-agent", "agent", "kata-agent"),
        ("kata-containers-initrd.img", "initrd", "initrd"),
    ] {
        let a = std::fs::metadata(dist.join(published)).unwrap();
        let c = std::fs::metadata(only_entry(&cache, step).join(file)).unwrap();
        assert_ne!((a.dev(), a.ino()), (c.dev(), c.ino()), "{published}");
        assert_eq!(c.nlink(), 1, "{step}/{file} has no other link");
    }
}

/// A copy of the shared fixture's cache, for a test that damages or
/// changes it.
fn cache_copy(b: &Built, into: &Path) -> PathBuf {
    let cache = into.join("cache");
    let cp = Command::new("cp")
        .arg("-a")
        .arg(&b.cache)
        .arg(&cache)
        .status()
        .unwrap();
    assert!(cp.success());
    cache
}

/// Names in `dir` that are not what a finished run leaves.
fn debris(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && !keep.contains(&n.as_str()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs apt-get, the network, the musl target, mke2fs and cpio (real initrd and image builds): run by cargo xtask test unit"]
fn sigkilled_mid_step_then_rerun_succeeds_and_leaves_nothing_partial() {
    use std::io::BufRead;
    let b = built();
    let d = tempfile::tempdir().unwrap();
    let cache = cache_copy(b, d.path());
    let dist = d.path().join("dist");
    for step in ["rootfs", "initrd"] {
        std::fs::remove_dir_all(cache.join("steps").join(step)).unwrap();
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["initrd", "--recipe", "minimal"])
        .current_dir(root())
        .env("KATA_XTASK_CACHE_DIR", &cache)
        .env("KATA_XTASK_DIST_DIR", &dist)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Killed as soon as the initrd step starts writing (the rootfs step
    // before it has finished).
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    loop {
        let line = lines
            .next()
            .expect("xtask ended before the initrd step")
            .unwrap();
        seen.push(line.clone());
        if line.contains("initrd:minimal:gzip ...") {
            break;
        }
    }
    // ... and has begun writing its output: the initrd, or the temp file
    // it is written to and renamed from (`.initrd.*.tmp`). The finished
    // `initrd` alone is a window of a few milliseconds before the step is
    // published, which a poll can miss (ci14 did, and timed out).
    let writing = || -> bool {
        std::fs::read_dir(cache.join("tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|run| {
                std::fs::read_dir(run.path())
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .flat_map(|step| {
                std::fs::read_dir(step.path().join("out"))
                    .into_iter()
                    .flatten()
                    .flatten()
            })
            .any(|f| {
                let name = f.file_name().to_string_lossy().into_owned();
                name == "initrd" || (name.starts_with(".initrd.") && name.ends_with(".tmp"))
            })
    };
    let since = std::time::Instant::now();
    while !writing() {
        assert!(
            since.elapsed() < std::time::Duration::from_secs(60),
            "the initrd step never started writing: {seen:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "SIGKILL: {seen:?}");
    let initrd_entries: Vec<_> = std::fs::read_dir(cache.join("steps/initrd"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(initrd_entries.is_empty(), "no initrd entry after the kill");
    // The killed run's work dir is swept once it is old enough to be sure
    // its creator is not about to lock it.
    std::thread::sleep(std::time::Duration::from_secs(11));
    let o = xtask(
        &["initrd", "--recipe", "minimal"],
        &[
            ("KATA_XTASK_CACHE_DIR", cache.as_path()),
            ("KATA_XTASK_DIST_DIR", dist.as_path()),
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        sha256(&dist.join("kata-containers-initrd.img")),
        sha256(&b.dist_a.join("kata-containers-initrd.img"))
    );
    let work: Vec<_> = std::fs::read_dir(cache.join("tmp")).unwrap().collect();
    assert!(work.is_empty(), "work dirs left: {work:?}");
    assert_eq!(debris(&dist, &[".lock"]), Vec::<String>::new());
}

#[test]
#[ignore = "needs root (a private mount namespace with a small tmpfs), apt-get, the network, the musl target, mke2fs and cpio: run by cargo xtask test unit"]
fn a_full_disk_is_a_clear_error_and_the_cache_stays_intact() {
    let b = built();
    let d = tempfile::tempdir().unwrap();
    let cache = cache_copy(b, d.path());
    let small = d.path().join("small");
    std::fs::create_dir(&small).unwrap();
    // The initrd and image (several MiB each) cannot be published into a
    // 1 MiB dist dir, and a 1 MiB cache cannot hold a rootfs build.
    let in_small_tmpfs = |args: &str, cache: &Path, dist: &Path| -> Output {
        let script = format!(
            "mount -t tmpfs -o size=1m kata-test {small} && exec {xtask} {args}",
            small = small.display(),
            xtask = env!("CARGO_BIN_EXE_xtask"),
        );
        Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .current_dir(root())
            .env("KATA_XTASK_CACHE_DIR", cache)
            .env("KATA_XTASK_DIST_DIR", dist)
            .output()
            .unwrap()
    };
    let o = in_small_tmpfs("initrd --recipe minimal", &cache, &small.join("dist"));
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let errs = error_lines(&o);
    assert_eq!(errs.len(), 1, "{}", stderr(&o));
    assert!(errs[0].contains("No space left on device"), "{}", errs[0]);
    assert!(
        errs[0].contains(&small.display().to_string()),
        "{}",
        errs[0]
    );
    // The cache is untouched: the same command with room is all hits.
    let room = d.path().join("dist");
    let envs = [
        ("KATA_XTASK_CACHE_DIR", cache.as_path()),
        ("KATA_XTASK_DIST_DIR", room.as_path()),
    ];
    let o = xtask(
        &["initrd", "--recipe", "minimal", "--dry-run", "--json"],
        &envs,
    );
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["runs"] == false),
        "{plan}"
    );

    // A cache with room for what it holds but not for a new initrd: the
    // build fails clearly, and every entry it held still verifies. (The
    // tmpfs lives as long as the namespace, so both runs happen in it.)
    std::fs::remove_dir_all(cache.join("steps/initrd")).unwrap();
    std::fs::remove_dir_all(cache.join("steps/image")).unwrap();
    let held_kib = disk_usage(&cache) / 1024 + 256;
    let script = format!(
        "mount -t tmpfs -o size={held_kib}k kata-test {small} && cp -a {cache} {small}/cache && \
         {{ KATA_XTASK_CACHE_DIR={small}/cache {xtask} initrd --recipe minimal; echo \"exit $?\" >&2; }} && \
         KATA_XTASK_CACHE_DIR={small}/cache exec {xtask} initrd --recipe minimal --dry-run --json",
        small = small.display(),
        cache = cache.display(),
        xtask = env!("CARGO_BIN_EXE_xtask"),
    );
    let o = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .current_dir(root())
        .env("KATA_XTASK_DIST_DIR", &room)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(err.contains("exit 1"), "{err}");
    let errs = error_lines(&o);
    assert_eq!(errs.len(), 1, "{err}");
    assert!(errs[0].contains("No space left on device"), "{}", errs[0]);
    let plan: serde_json::Value = serde_json::from_slice(&o.stdout).expect(&err);
    for s in plan["steps"].as_array().unwrap() {
        let cached = s["id"] != "initrd:minimal:gzip";
        assert_eq!(s["cached"], cached, "{s}");
    }
}

/// Bytes of disk `dir` uses (blocks, as a tmpfs counts them).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let m = e.path().symlink_metadata().unwrap();
        total += m.blocks() * 512;
        if m.is_dir() {
            total += disk_usage(&e.path());
        }
    }
    total
}
