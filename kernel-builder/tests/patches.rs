//! apply_patches with the real `patch` tool on a scratch tree.

use std::fs;

use kernel_builder::{apply_patches, Error, Patches};

#[test]
fn applies_in_order_and_names_the_patch_that_fails() {
    let configs = tempfile::tempdir().unwrap();
    let series = configs.path().join("patches/test");
    fs::create_dir_all(&series).unwrap();
    fs::write(
        series.join("0001-greeting.patch"),
        "--- a/hello.txt\n+++ b/hello.txt\n@@ -1 +1 @@\n-hello\n+hello kata\n",
    )
    .unwrap();
    // Written against the original text, so it no longer applies after 0001.
    fs::write(
        series.join("0002-stale.patch"),
        "--- a/hello.txt\n+++ b/hello.txt\n@@ -1 +1 @@\n-hello\n+hi\n",
    )
    .unwrap();
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("hello.txt"), "hello\n").unwrap();

    let patches = Patches::load(configs.path(), "test").unwrap();
    let mut log = Vec::new();
    let err = apply_patches(src.path(), &patches, &mut log).unwrap_err();
    assert!(matches!(err, Error::Patch { .. }), "{err}");
    assert!(err.to_string().contains("0002-stale.patch"), "{err}");
    // 0001 applied; the failed 0002 left nothing behind (dry run first).
    assert_eq!(
        fs::read_to_string(src.path().join("hello.txt")).unwrap(),
        "hello kata\n"
    );
    assert!(!src.path().join("hello.txt.rej").exists());
}

#[test]
fn build_refuses_an_unconfigured_tree_and_unknown_arch() {
    let build_dir = tempfile::tempdir().unwrap();
    let options = kernel_builder::BuildOptions {
        jobs: 1,
        log_path: build_dir.path().join("build.log"),
        progress: false,
        source_date_epoch: 0,
    };
    let err =
        kernel_builder::build(build_dir.path(), build_dir.path(), "x86_64", &options).unwrap_err();
    assert!(err.to_string().contains("run configure first"), "{err}");
    let err =
        kernel_builder::build(build_dir.path(), build_dir.path(), "sparc", &options).unwrap_err();
    assert!(
        err.is_bad_input() && err.to_string().contains("sparc"),
        "{err}"
    );
}

#[test]
fn extract_source_rejects_a_tarball_without_a_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let top = dir.path().join("top");
    fs::create_dir_all(top.join("x")).unwrap();
    fs::write(top.join("x/README"), "not a kernel\n").unwrap();
    let tarball = dir.path().join("t.tar");
    let ok = std::process::Command::new("tar")
        .arg("-cf")
        .arg(&tarball)
        .arg("-C")
        .arg(&top)
        .arg("x")
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let dest = dir.path().join("src");
    let err = kernel_builder::extract_source(&tarball, &dest).unwrap_err();
    assert!(
        err.to_string().contains("not a kernel source tarball"),
        "{err}"
    );
    assert!(
        !dest.exists(),
        "a failed extraction must leave nothing at dest"
    );
}
