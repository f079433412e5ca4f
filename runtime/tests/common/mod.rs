//! Shared fixtures of the VM tests: a guest kernel and a busybox initrd.
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The guest kernel for real-QEMU tests: `$KATA_TEST_KERNEL`, else a kernel
/// built by `cargo xtask kernel` (target/dist), else /boot/vmlinuz-*.
pub fn test_kernel() -> PathBuf {
    if let Some(k) = std::env::var_os("KATA_TEST_KERNEL") {
        let k = PathBuf::from(k);
        assert!(
            k.is_file(),
            "KATA_TEST_KERNEL={} is not a file",
            k.display()
        );
        return k;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut candidates = Vec::new();
    for dir in [root.join("target/dist"), PathBuf::from("/boot")] {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if (name.starts_with("vmlinuz") || name.starts_with("bzImage"))
                    && e.path().is_file()
                {
                    candidates.push(e.path());
                }
            }
        }
    }
    candidates.sort();
    candidates.pop().unwrap_or_else(|| {
        panic!(
            "no guest kernel for the VM tests: set KATA_TEST_KERNEL to a bzImage, e.g. \
             `apt-get download linux-image-6.1.0-50-cloud-amd64 && dpkg-deb -x linux-image-*.deb k` \
             then KATA_TEST_KERNEL=$PWD/k/boot/vmlinuz-6.1.0-50-cloud-amd64"
        )
    })
}

/// A busybox initrd (cpio newc, made with the `cpio` tool) whose /init
/// prints `KATA-TEST-INIT: up` on the console, then powers off, or sleeps
/// forever when the kernel command line has `kata_test_mode=sleep`.
pub fn busybox_initrd(dir: &Path) -> PathBuf {
    let tree = dir.join("initrd-tree");
    std::fs::create_dir_all(tree.join("bin")).unwrap();
    std::fs::create_dir_all(tree.join("dev")).unwrap();
    std::fs::copy("/bin/busybox", tree.join("bin/busybox"))
        .expect("busybox-static is needed for the VM tests");
    // Without a /dev/console node the kernel starts init with no stdio:
    // mount devtmpfs and reopen the console first.
    let init = "#!/bin/busybox sh\n\
        /bin/busybox mount -t devtmpfs dev /dev\n\
        exec </dev/console >/dev/console 2>&1\n\
        /bin/busybox echo \"KATA-TEST-INIT: up\"\n\
        if [ \"$kata_test_mode\" = sleep ]; then while true; do /bin/busybox sleep 1; done; fi\n\
        /bin/busybox poweroff -f\n";
    let init_path = tree.join("init");
    std::fs::write(&init_path, init).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init_path, std::fs::Permissions::from_mode(0o755)).unwrap();

    let out = dir.join("initrd.cpio");
    let mut child = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&tree)
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .expect("the cpio tool is needed for the VM tests");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b".\nbin\nbin/busybox\ndev\ninit\n")
        .unwrap();
    assert!(child.wait().unwrap().success(), "cpio failed");
    out
}

/// True while a process with this pid exists (and is not a zombie we own).
pub fn process_exists(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.split_whitespace().nth(2).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}
