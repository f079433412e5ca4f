use super::*;
use crate::util::run_ok;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// An independent Fletcher-64: 128-bit accumulators reduced explicitly, so a
/// mistake in the wrapping of `fletcher64` cannot be mirrored here.
fn reference_fletcher64(data: &[u8]) -> u64 {
    let mut lo: u128 = 0;
    let mut hi: u128 = 0;
    let mut i = 0;
    while i + 4 <= data.len() {
        let word = data[i] as u128
            | (data[i + 1] as u128) << 8
            | (data[i + 2] as u128) << 16
            | (data[i + 3] as u128) << 24;
        lo = (lo + word) % (1u128 << 32);
        hi = (hi + lo) % (1u128 << 64);
        i += 4;
    }
    (((hi << 32) % (1u128 << 64)) | lo) as u64
}

#[test]
fn fletcher64_known_answers() {
    // Words 1, 2, 3: running sums 1, 3, 6; their sum 10.
    let words: Vec<u8> = [1u32, 2, 3].iter().flat_map(|w| w.to_le_bytes()).collect();
    assert_eq!(fletcher64(&words), 0x0000_000A_0000_0006);
    // The low sum wraps at 32 bits: 0xFFFFFFFF + 2 = 1; hi = 0xFFFFFFFF + 1
    // = 2^32, whose << 32 falls off a u64.
    let words: Vec<u8> = [0xFFFF_FFFFu32, 2]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    assert_eq!(fletcher64(&words), 0x0000_0000_0000_0001);
    assert_eq!(fletcher64(&[0u8; 4096]), 0);
    let pseudo: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(fletcher64(&pseudo), reference_fletcher64(&pseudo));
}

#[test]
fn dax_header_matches_kernel_layout() {
    let namespace = 128 * MIB;
    let b = DaxHeader::for_namespace(namespace).encode();
    // Offsets from struct nd_pfn_sb in linux/drivers/nvdimm/pfn.h (6.1):
    // signature[16] @0, uuid[16] @16, parent_uuid[16] @32, flags u32 @48,
    // version_major u16 @52, version_minor u16 @54, dataoff u64 @56,
    // npfns u64 @64, mode u32 @72, start_pad u32 @76, end_trunc u32 @80,
    // align u32 @84, page_size u32 @88, page_struct_size u16 @92,
    // padding[3994] @94, checksum u64 @4088; 4096 bytes in all.
    assert_eq!(b.len(), 4096);
    assert_eq!(&b[0..16], b"NVDIMM_PFN_INFO\0");
    assert_eq!(&b[16..48], &[0u8; 32]);
    assert_eq!(&b[48..52], &[0, 0, 0, 0]);
    assert_eq!(&b[52..54], &[1, 0]);
    assert_eq!(&b[54..56], &[4, 0]);
    assert_eq!(&b[56..64], &[0, 0, 0x20, 0, 0, 0, 0, 0], "dataoff = 2 MiB");
    assert_eq!(
        u64::from_le_bytes(b[64..72].try_into().unwrap()),
        (128 - 2) * 1024 * 1024 / 4096
    );
    assert_eq!(&b[72..76], &[1, 0, 0, 0], "PFN_MODE_RAM");
    assert_eq!(&b[76..84], &[0u8; 8]);
    assert_eq!(&b[84..88], &[0, 0, 0x20, 0], "align = 2 MiB");
    assert_eq!(&b[88..92], &[0, 0x10, 0, 0], "page_size = 4096");
    assert_eq!(&b[92..94], &[64, 0]);
    assert!(b[94..4088].iter().all(|&x| x == 0));
    let mut zeroed = b;
    zeroed[4088..].fill(0);
    assert_eq!(
        u64::from_le_bytes(b[4088..].try_into().unwrap()),
        reference_fletcher64(&zeroed)
    );
    assert_ne!(&b[4088..], &[0u8; 8]);

    let decoded = DaxHeader::decode(&b).unwrap();
    assert_eq!(decoded, DaxHeader::for_namespace(namespace));
    let mut corrupt = b;
    corrupt[100] = 1;
    assert!(DaxHeader::decode(&corrupt)
        .unwrap_err()
        .to_string()
        .contains("checksum"));
}

#[test]
fn mbr_layout_and_partx_agree() {
    let mbr = Mbr::single_partition(0x1234_5678, 3 * MIB, 125 * MIB).unwrap();
    let b = mbr.encode();
    assert_eq!(&b[440..444], &[0x78, 0x56, 0x34, 0x12]);
    assert_eq!(b[446], 0, "not bootable");
    assert_eq!(b[450], 0x83);
    assert_eq!(u32::from_le_bytes(b[454..458].try_into().unwrap()), 6144);
    assert_eq!(
        u32::from_le_bytes(b[458..462].try_into().unwrap()),
        125 * 2048
    );
    // CHS of LBA 6144 with 255 heads, 63 sectors: c=0, h=97, s=34.
    assert_eq!(&b[447..450], &[97, 34, 0]);
    assert!(b[462..510].iter().all(|&x| x == 0));
    assert_eq!(&b[510..512], &[0x55, 0xAA]);
    assert_eq!(Mbr::decode(&b).unwrap(), mbr);
    assert!(Mbr::single_partition(0, 1000, 4096).is_err());

    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let f = File::create(&disk).unwrap();
    f.set_len(128 * MIB).unwrap();
    f.write_all_at(&b, 0).unwrap();
    let out = run_ok(
        Command::new("partx")
            .args(["--show", "--noheadings", "-o", "NR,START,SECTORS,TYPE"])
            .arg(&disk),
    );
    let fields: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(fields, ["1", "6144", "256000", "0x83"]);
}

fn small_tree(dir: &Path) -> PathBuf {
    let recipe = crate::tree::tests::minimal_recipe();
    let inputs = crate::tree::tests::test_inputs(&recipe, dir, 1_700_000_000);
    let tree = dir.join("rootfs");
    crate::tree::build_rootfs(&recipe, &inputs, &tree).unwrap();
    tree
}

fn sha256_file(p: &Path) -> String {
    host_support::hash::sha256_file(p).unwrap()
}

fn extract_partition(image: &Path, report: &ImageReport, to: &Path) {
    let data = read_at(
        image,
        report.partition_offset,
        report.partition_bytes as usize,
    )
    .unwrap();
    std::fs::write(to, data).unwrap();
}

/// Sets new ctimes (chmod twice) and atimes (reading) on every file, as a
/// later build on a different day would see them; mtimes are restored.
fn disturb_host_times(tree: &Path) {
    for e in list_tree(tree).unwrap() {
        if matches!(e.kind, EntryKind::Regular | EntryKind::Directory) {
            let p = std::fs::Permissions::from_mode(e.perm);
            std::fs::set_permissions(&e.host_path, std::fs::Permissions::from_mode(0o700)).unwrap();
            std::fs::set_permissions(&e.host_path, p).unwrap();
            if e.kind == EntryKind::Regular {
                std::fs::read(&e.host_path).unwrap();
            }
        }
    }
    crate::tree::pin_times(tree, 1_700_000_000).unwrap();
    for e in list_tree(tree).unwrap() {
        if e.kind == EntryKind::Regular {
            std::fs::read(&e.host_path).unwrap();
        }
    }
}

#[test]
#[ignore = "needs root (device nodes) and busybox-static (/bin/busybox): run by cargo xtask test unit"]
fn ext4_dax_image_is_valid_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let tree = small_tree(dir.path());
    let opts = ImageOptions::new(1_700_000_000);
    let a = dir.path().join("a.img");
    let report = build_image(&tree, &a, &opts).unwrap();
    let len = std::fs::metadata(&a).unwrap().len();
    assert_eq!(report.bytes, len);
    assert_eq!(len % (128 * MIB), 0);
    assert_eq!(report.partition_offset, 3 * MIB);
    assert_eq!(report.partition_bytes, len - 3 * MIB);
    assert_eq!(report.fs_bytes, report.partition_bytes);

    let outer = Mbr::decode(&read_at(&a, 0, 512).unwrap()).unwrap();
    let p = outer.partitions[0].unwrap();
    assert_eq!(
        (
            p.partition_type,
            p.first_lba as u64 * 512,
            p.sectors as u64 * 512
        ),
        (0x83, 3 * MIB, len - 3 * MIB)
    );
    assert!(outer.partitions[1..].iter().all(Option::is_none));
    let inner = Mbr::decode(&read_at(&a, 2 * MIB, 512).unwrap()).unwrap();
    let p = inner.partitions[0].unwrap();
    assert_eq!(
        (p.first_lba as u64 * 512, p.sectors as u64 * 512),
        (MIB, len - 3 * MIB)
    );
    let dax = read_at(&a, 4096, 4096).unwrap();
    assert_eq!(&dax[..16], b"NVDIMM_PFN_INFO\0");
    assert_eq!(u64::from_le_bytes(dax[56..64].try_into().unwrap()), 2 * MIB);
    assert_eq!(
        DaxHeader::decode(&dax).unwrap(),
        DaxHeader::for_namespace(len)
    );

    let part = dir.path().join("part.ext4");
    extract_partition(&a, &report, &part);
    run_ok(Command::new("e2fsck").arg("-fn").arg(&part));
    let dumpe2fs = Command::new("dumpe2fs")
        .arg("-h")
        .arg(&part)
        .output()
        .unwrap();
    let header = String::from_utf8_lossy(&dumpe2fs.stdout);
    assert!(
        header.contains(&format!("Filesystem UUID:          {}", opts.fs_uuid)),
        "{header}"
    );
    assert!(
        header.contains("Block size:               4096"),
        "{header}"
    );
    assert!(
        header.contains(&format!("Directory Hash Seed:      {}", opts.hash_seed)),
        "{header}"
    );
    let cat = Command::new("debugfs")
        .args(["-R", "cat /etc/hostname"])
        .arg(&part)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "kata-guest\n");
    let stat = Command::new("debugfs")
        .args(["-R", "stat /dev/console"])
        .arg(&part)
        .output()
        .unwrap();
    let stat = String::from_utf8_lossy(&stat.stdout);
    assert!(
        stat.contains("Type: character special") && stat.contains("Mode:  0600"),
        "{stat}"
    );
    assert!(stat.contains("Device major/minor number: 05:01"), "{stat}");
    assert!(stat.contains("ctime: 0x6553f100:00000000"), "{stat}");
    let stat = Command::new("debugfs")
        .args(["-R", "stat /sbin/init"])
        .arg(&part)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&stat.stdout).contains("Fast link dest: \"/usr/bin/kata-agent\"")
    );

    // Second build later, after ctimes and atimes on the host changed.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    disturb_host_times(&tree);
    let b = dir.path().join("b.img");
    assert_eq!(build_image(&tree, &b, &opts).unwrap(), report);
    assert_eq!(
        sha256_file(&a),
        sha256_file(&b),
        "ext4 image differs between builds"
    );

    // The same inputs rebuilt into a new tree give the same image.
    let dir2 = tempfile::tempdir().unwrap();
    let tree2 = small_tree(dir2.path());
    let c = dir.path().join("c.img");
    build_image(&tree2, &c, &opts).unwrap();
    assert_eq!(
        sha256_file(&a),
        sha256_file(&c),
        "ext4 image differs for a rebuilt tree"
    );

    // And a different epoch does change it.
    let d = dir.path().join("d.img");
    build_image(
        &tree,
        &d,
        &ImageOptions {
            source_date_epoch: 1_700_000_001,
            ..opts.clone()
        },
    )
    .unwrap();
    assert_ne!(sha256_file(&a), sha256_file(&d));
}

#[test]
#[ignore = "needs root (device nodes) and busybox-static (/bin/busybox): run by cargo xtask test unit"]
fn ext4_plain_image_honours_free_space_and_alignment() {
    let dir = tempfile::tempdir().unwrap();
    let tree = small_tree(dir.path());
    let opts = ImageOptions {
        dax: false,
        align_mib: 32,
        free_mib: 40,
        ..ImageOptions::new(1_700_000_000)
    };
    let out = dir.path().join("plain.img");
    let report = build_image(&tree, &out, &opts).unwrap();
    assert_eq!(report.bytes % (32 * MIB), 0);
    assert_eq!(report.partition_offset, MIB);
    assert!(report.fs_free_bytes >= 40 * MIB, "{report:?}");
    let mbr = Mbr::decode(&read_at(&out, 0, 512).unwrap()).unwrap();
    assert_eq!(mbr.partitions[0].unwrap().first_lba, 2048);
    assert_ne!(&read_at(&out, 4096, 16).unwrap()[..], b"NVDIMM_PFN_INFO\0");
    let part = dir.path().join("part");
    extract_partition(&out, &report, &part);
    run_ok(Command::new("e2fsck").arg("-fn").arg(&part));

    let err = build_image(
        &tree,
        &out,
        &ImageOptions {
            source_date_epoch: 0,
            ..opts.clone()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("SOURCE_DATE_EPOCH >= 1"), "{err}");
    let err = build_image(
        &tree,
        &out,
        &ImageOptions {
            fs_uuid: "nope".into(),
            ..opts
        },
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("fs_uuid: `nope` is not a UUID"),
        "{err:#}"
    );
}

#[test]
#[ignore = "needs root (device nodes), busybox-static (/bin/busybox) and erofs-utils: run by cargo xtask test unit"]
fn erofs_image_is_valid_and_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let tree = small_tree(dir.path());
    // Owners come from the tree built as root (Debian has set-gid shadow
    // files): this one is made group 42 and set-gid.
    std::os::unix::fs::lchown(tree.join("etc/hostname"), Some(0), Some(42)).unwrap();
    std::fs::set_permissions(
        tree.join("etc/hostname"),
        std::fs::Permissions::from_mode(0o2644),
    )
    .unwrap();
    let opts = ImageOptions {
        fs: Filesystem::Erofs,
        ..ImageOptions::new(1_700_000_000)
    };
    let a = dir.path().join("a.img");
    let report = build_image(&tree, &a, &opts).unwrap();
    assert_eq!(report.bytes % (128 * MIB), 0);
    assert_eq!(report.partition_offset, 3 * MIB);
    let part = dir.path().join("part.erofs");
    extract_partition(&a, &report, &part);
    run_ok(Command::new("fsck.erofs").arg(&part));
    let x = dir.path().join("x");
    run_ok(
        Command::new("fsck.erofs")
            .arg(format!("--extract={}", x.display()))
            .arg(&part),
    );
    assert_eq!(
        std::fs::read_to_string(x.join("etc/hostname")).unwrap(),
        "kata-guest\n"
    );
    let hostname = std::fs::metadata(x.join("etc/hostname")).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&hostname),
            std::os::unix::fs::MetadataExt::gid(&hostname)
        ),
        (0, 42)
    );
    assert_eq!(
        std::fs::read_link(x.join("init")).unwrap(),
        Path::new("/usr/bin/kata-agent")
    );
    let dump = Command::new("dump.erofs").arg(&part).output().unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains(&opts.fs_uuid), "{dump}");

    std::thread::sleep(std::time::Duration::from_millis(1500));
    disturb_host_times(&tree);
    let b = dir.path().join("b.img");
    build_image(&tree, &b, &opts).unwrap();
    assert_eq!(
        sha256_file(&a),
        sha256_file(&b),
        "erofs image differs between builds"
    );

    let err = build_image(
        &tree,
        &b,
        &ImageOptions {
            free_mib: 1,
            ..opts
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("erofs is read-only"), "{err}");
}

/// `veritysetup verify` of partition 1 against the hash tree in partition 2
/// of `image`, with the report's parameters: the tree this crate wrote is
/// the one the kernel will check.
fn veritysetup_verify(image: &Path, report: &ImageReport, data: &Path) -> std::process::Output {
    let v = report.verity.as_ref().expect("a verity image");
    let header = report.partition_offset - PARTITION_OFFSET;
    Command::new("veritysetup")
        .args(["verify", "--no-superblock", "--hash=sha256"])
        .arg(format!("--data-blocks={}", v.data_blocks))
        .arg(format!("--data-block-size={}", v.data_block_size))
        .arg(format!("--hash-block-size={}", v.hash_block_size))
        .arg(format!("--hash-offset={}", header + v.hash_offset))
        .arg(format!("--salt={}", v.salt))
        .arg(data)
        .arg(image)
        .arg(&v.root_hash)
        .output()
        .unwrap()
}

#[test]
#[ignore = "needs root (device nodes), busybox-static, erofs-utils and veritysetup (cryptsetup-bin): run by cargo xtask test unit"]
fn verity_images_verify_and_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let tree = small_tree(dir.path());
    for (fs, dax) in [(Filesystem::Ext4, true), (Filesystem::Erofs, false)] {
        let opts = ImageOptions {
            fs,
            dax,
            verity: true,
            ..ImageOptions::new(1_700_000_000)
        };
        let a = dir.path().join(format!("{}-a.img", fs.as_str()));
        let b = dir.path().join(format!("{}-b.img", fs.as_str()));
        let report = build_image(&tree, &a, &opts).unwrap();
        assert_eq!(build_image(&tree, &b, &opts).unwrap(), report);
        assert_eq!(
            sha256_file(&a),
            sha256_file(&b),
            "{fs:?}: two builds differ"
        );
        let v = report.verity.clone().unwrap();
        assert_eq!(v.data_blocks * 4096, report.fs_bytes, "{fs:?}");
        assert_eq!(v.salt.len(), 64);
        assert!(v.kernel_params().starts_with(&format!(
            "root_hash={},salt={},data_blocks=",
            v.root_hash, v.salt
        )));
        // Both MBRs: the data partition, then the hash tree's.
        let header = report.partition_offset - PARTITION_OFFSET;
        let inner = Mbr::decode(&read_at(&a, header, 512).unwrap()).unwrap();
        let [Some(p1), Some(p2), None, None] = inner.partitions else {
            panic!("{fs:?}: {inner:?}")
        };
        assert_eq!(u64::from(p1.first_lba) * SECTOR, PARTITION_OFFSET);
        assert_eq!(u64::from(p1.sectors) * SECTOR, report.partition_bytes);
        assert_eq!(u64::from(p2.first_lba) * SECTOR, v.hash_offset);
        assert!(u64::from(p2.sectors) * SECTOR >= v.hash_bytes);
        assert!(v.hash_offset + v.hash_bytes <= report.bytes - header);
        if dax {
            let outer = Mbr::decode(&read_at(&a, 0, 512).unwrap()).unwrap();
            assert_eq!(
                u64::from(outer.partitions[1].unwrap().first_lba) * SECTOR,
                header + v.hash_offset
            );
        }

        let data = dir.path().join(format!("{}-data", fs.as_str()));
        std::fs::write(
            &data,
            read_at(&a, report.partition_offset, report.fs_bytes as usize).unwrap(),
        )
        .unwrap();
        let ok = veritysetup_verify(&a, &report, &data);
        assert!(
            ok.status.success(),
            "{fs:?}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
        // One byte changed in the data: veritysetup finds it.
        let mut bytes = std::fs::read(&data).unwrap();
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        std::fs::write(&data, bytes).unwrap();
        let bad = veritysetup_verify(&a, &report, &data);
        assert!(!bad.status.success(), "{fs:?}: a changed byte verified");
    }
}

#[test]
#[ignore = "needs root (the reference tree's device nodes), busybox-static and erofs-utils: run by cargo xtask test unit"]
fn rootless_tree_gives_the_same_digest_initrd_and_ext4_image() {
    use crate::rootless::{record_path, Privileges, RootlessRecord};
    let dir = tempfile::tempdir().unwrap();
    let root_dir = dir.path().join("root");
    let rootless_dir = dir.path().join("rootless");
    std::fs::create_dir(&root_dir).unwrap();
    std::fs::create_dir(&rootless_dir).unwrap();
    let as_root = small_tree(&root_dir);
    let recipe = crate::tree::tests::minimal_recipe();
    let mut inputs = crate::tree::tests::test_inputs(&recipe, &rootless_dir, 1_700_000_000);
    inputs.privileges = Privileges::Rootless;
    let rootless = rootless_dir.join("rootfs");
    crate::tree::build_rootfs(&recipe, &inputs, &rootless).unwrap();

    // Nothing was mknod'ed: the devices are empty files the record lists.
    let console = std::fs::symlink_metadata(rootless.join("dev/console")).unwrap();
    assert!(console.is_file() && console.len() == 0);
    assert_eq!(console.permissions().mode() & 0o7777, 0o600);
    let record = RootlessRecord::load(&rootless).unwrap().unwrap();
    assert_eq!(record.owner, (0, 0));
    let devices: Vec<&str> = record.devices.keys().map(String::as_str).collect();
    assert_eq!(devices, ["dev/console", "dev/kmsg", "dev/null"]);
    assert!(record_path(&as_root).is_some_and(|p| !p.exists()));
    // Read-only directories got their mode at the end.
    let proc_mode = std::fs::metadata(rootless.join("proc"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(proc_mode & 0o7777, 0o555);

    assert_eq!(
        crate::tar::tree_digest(&as_root).unwrap(),
        crate::tar::tree_digest(&rootless).unwrap()
    );
    let cpio = |tree: &Path| {
        let mut bytes = Vec::new();
        crate::cpio::write_cpio(tree, &mut bytes, 1_700_000_000).unwrap();
        bytes
    };
    assert!(
        cpio(&as_root) == cpio(&rootless),
        "the cpio archives differ"
    );

    // ext4: the owner and devices come from the record; the rootless
    // tree's files must not be root's for that to be tested as root.
    for e in list_tree(&rootless).unwrap() {
        std::os::unix::fs::lchown(&e.host_path, Some(4242), Some(4343)).unwrap();
    }
    let opts = ImageOptions::new(1_700_000_000);
    let a = dir.path().join("root.img");
    let b = dir.path().join("rootless.img");
    build_image(&as_root, &a, &opts).unwrap();
    build_image(&rootless, &b, &opts).unwrap();
    assert_eq!(sha256_file(&a), sha256_file(&b), "the ext4 images differ");

    let mut erofs = ImageOptions::new(1_700_000_000);
    erofs.fs = Filesystem::Erofs;
    erofs.free_mib = 0;
    let err = format!(
        "{:#}",
        build_image(&rootless, &dir.path().join("e.img"), &erofs).unwrap_err()
    );
    assert!(
        err.contains("/dev/console") && err.contains("--fs ext4"),
        "{err}"
    );
    assert!(!dir.path().join("e.img").exists());
}
