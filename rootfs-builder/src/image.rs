//! Raw rootfs disk images: an MBR with one Linux partition at 1 MiB holding an
//! ext4 (`mke2fs -d`) or erofs (`mkfs.erofs`) filesystem built from a tree,
//! without loop devices or mounts; optionally preceded by the 2 MiB NVDIMM
//! "DAX header" so that the image can back a QEMU nvdimm.
//!
//! With DAX the file looks like this (as upstream osbuilder lays it out):
//!
//! ```text
//! 0        MBR #1: one partition from 3 MiB to the end of the file
//! 4 KiB    struct nd_pfn_sb ("NVDIMM_PFN_INFO", mode RAM, dataoff 2 MiB, align 2 MiB)
//! 2 MiB    MBR #2: one partition from 1 MiB (of this inner disk) to its end
//! 3 MiB    the filesystem
//! ```
//!
//! A kernel whose NVDIMM driver reads the pfn info block sees a pmem device
//! starting at 2 MiB and reads MBR #2; anything else reads MBR #1. Both
//! partitions cover the same bytes.
//!
//! Determinism: ext4 gets a fixed UUID and directory hash seed, our own
//! mke2fs.conf (host defaults cannot leak in), `E2FSPROGS_FAKE_TIME` for the
//! superblock and mke2fs-created inodes, and afterwards `debugfs -w` sets
//! atime/mtime/ctime/crtime of every populated inode (mke2fs copies the host's
//! ctime and atime, which nothing else can pin). erofs gets `-T` and a fixed
//! UUID, and the owners the tree has on disk (a tree built as root).
//! mkfs.erofs 1.5 takes them from the tree only, so a rootless tree is
//! given `--all-root` and must not need more.
//!
//! A tree built without root (see [`crate::rootless`]) gets the same ext4:
//! the same `debugfs -w` pass gives every inode the record's owner, and
//! replaces each device placeholder by the device node (`rm`, `mknod`, its
//! mode), and the modes the record keeps. mkfs.erofs 1.5 only takes device
//! nodes and modes from the tree, so an erofs image of a rootless tree with
//! either in its record is refused.

use crate::walk::{list_tree, EntryKind};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

pub const MIB: u64 = 1 << 20;
pub const SECTOR: u64 = 512;
/// Where the single partition starts, relative to its MBR.
pub const PARTITION_OFFSET: u64 = MIB;
/// Size of the DAX header placed in front of the image.
pub const DAX_HEADER_BYTES: u64 = 2 * MIB;
/// Where the kernel looks for the pfn info block in a namespace.
pub const DAX_INFO_OFFSET: u64 = 4096;
/// MBR partition type "Linux".
pub const MBR_TYPE_LINUX: u8 = 0x83;
/// ext4 can only do DAX with blocks of the page size.
pub const EXT4_BLOCK_SIZE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    Ext4,
    Erofs,
}

impl Filesystem {
    pub fn as_str(self) -> &'static str {
        match self {
            Filesystem::Ext4 => "ext4",
            Filesystem::Erofs => "erofs",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOptions {
    pub fs: Filesystem,
    /// The whole file's size is a multiple of this (upstream: 128 MiB).
    pub align_mib: u64,
    /// Free space wanted inside an ext4 filesystem; must be 0 for erofs.
    pub free_mib: u64,
    /// Put the 2 MiB NVDIMM/DAX header in front.
    pub dax: bool,
    /// Filesystem UUID, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
    pub fs_uuid: String,
    /// ext4 directory hash seed (a UUID); unused by erofs.
    pub hash_seed: String,
    /// Every timestamp the filesystem tools write.
    pub source_date_epoch: i64,
    /// Add a dm-verity hash tree of the filesystem as partition 2.
    pub verity: bool,
}

impl ImageOptions {
    /// Upstream-like defaults: ext4, 128 MiB alignment, DAX header, no extra
    /// free space. The UUIDs are fixed so that images are reproducible.
    pub fn new(source_date_epoch: i64) -> Self {
        ImageOptions {
            fs: Filesystem::Ext4,
            align_mib: 128,
            free_mib: 0,
            dax: true,
            fs_uuid: "6a7a3b1e-58d4-4bd0-9b58-6b6174610001".into(),
            hash_seed: "6a7a3b1e-58d4-4bd0-9b58-6b6174610002".into(),
            source_date_epoch,
            verity: false,
        }
    }
}

/// What [`build_image`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageReport {
    /// Size of the whole file.
    pub bytes: u64,
    /// Size of the filesystem (ext4: the whole partition; erofs: its image).
    pub fs_bytes: u64,
    /// Free space inside the filesystem (ext4; 0 for erofs).
    pub fs_free_bytes: u64,
    /// Byte offset of the filesystem in the file (1 MiB, or 3 MiB with DAX).
    pub partition_offset: u64,
    /// Size of the partition (both MBRs describe the same bytes).
    pub partition_bytes: u64,
    pub dax: bool,
    /// The hash tree, with `--verity`.
    pub verity: Option<Verity>,
}

/// A dm-verity hash tree over partition 1, as partition 2, with no verity
/// superblock (upstream's `veritysetup format --no-superblock` layout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verity {
    pub root_hash: String,
    /// Derived from the filesystem's bytes, so that two builds of the same
    /// inputs are identical (veritysetup would draw a random one).
    pub salt: String,
    pub data_blocks: u64,
    pub data_block_size: u64,
    pub hash_block_size: u64,
    /// Where partition 2 starts, relative to the inner MBR (as partition 1's
    /// `partition_offset` minus the DAX header).
    pub hash_offset: u64,
    pub hash_bytes: u64,
}

impl Verity {
    /// Upstream's `kernel_verity_params` string.
    pub fn kernel_params(&self) -> String {
        format!(
            "root_hash={},salt={},data_blocks={},data_block_size={},hash_block_size={}",
            self.root_hash, self.salt, self.data_blocks, self.data_block_size, self.hash_block_size
        )
    }
}

/// Room kept for the hash tree of a `data_bytes` filesystem: 32 bytes per
/// 4 KiB block on the first level, each level above 128 times smaller,
/// rounded up to whole MiB.
pub fn verity_reserve(data_bytes: u64) -> u64 {
    let mut blocks = data_bytes.div_ceil(EXT4_BLOCK_SIZE);
    let mut hash_blocks = 0;
    loop {
        blocks = blocks.div_ceil(EXT4_BLOCK_SIZE / 32);
        hash_blocks += blocks;
        if blocks <= 1 {
            break;
        }
    }
    round_up((hash_blocks + 1) * EXT4_BLOCK_SIZE, MIB)
}

/// Builds a raw disk image of `tree` at `out` (temp file + rename).
pub fn build_image(tree: &Path, out: &Path, opts: &ImageOptions) -> Result<ImageReport> {
    if opts.align_mib == 0 || (opts.dax && !opts.align_mib.is_multiple_of(2)) {
        bail!(
            "image align_mib {}: must be positive (and even with DAX, to keep 2 MiB alignment)",
            opts.align_mib
        );
    }
    let fs_uuid = parse_uuid(&opts.fs_uuid).context("image fs_uuid")?;
    parse_uuid(&opts.hash_seed).context("image hash_seed")?;
    if !tree.is_dir() {
        bail!("{}: rootfs tree is not a directory", tree.display());
    }
    let header = if opts.dax { DAX_HEADER_BYTES } else { 0 };
    let align = opts.align_mib * MIB;
    let scratch = tempfile::Builder::new()
        .prefix(".image-build.")
        .tempdir_in(crate::util::parent_dir(out))
        .context("cannot create a scratch directory next to the output")?;
    let fs_image = scratch.path().join(format!("fs.{}", opts.fs.as_str()));

    let (total, fs_bytes, fs_free_bytes) = match opts.fs {
        Filesystem::Ext4 => {
            if opts.source_date_epoch < 1 {
                bail!("ext4 images need SOURCE_DATE_EPOCH >= 1 (got {}): e2fsprogs treats E2FSPROGS_FAKE_TIME=0 as unset and would stamp the wall clock", opts.source_date_epoch);
            }
            let estimate = ext4_size_estimate(tree)? + opts.free_mib * MIB;
            let hash_room = |region: u64| {
                if opts.verity {
                    verity_reserve(region)
                } else {
                    0
                }
            };
            let mut total = round_up(
                header + PARTITION_OFFSET + estimate + hash_room(estimate),
                align,
            );
            let mut attempts = 0;
            loop {
                attempts += 1;
                let region = total - header - PARTITION_OFFSET;
                let fs_bytes = region - hash_room(region);
                match make_ext4(tree, &fs_image, fs_bytes, opts, scratch.path())? {
                    Ext4Outcome::Built { free_bytes } if free_bytes >= opts.free_mib * MIB => {
                        break (total, fs_bytes, free_bytes);
                    }
                    _ if attempts < 16 => total += align,
                    _ => bail!("ext4: {} does not fit a {} MiB filesystem with {} MiB free after 16 attempts", tree.display(), fs_bytes / MIB, opts.free_mib),
                }
            }
        }
        Filesystem::Erofs => {
            if opts.free_mib != 0 {
                bail!("image free_mib {}: erofs is read-only, free space has no meaning; use 0 or --fs ext4", opts.free_mib);
            }
            make_erofs(tree, &fs_image, opts)?;
            let fs_bytes = std::fs::metadata(&fs_image)?.len();
            // With verity, partition 1 ends at a MiB boundary after the
            // filesystem, and the hash tree follows.
            let data = if opts.verity {
                round_up(fs_bytes, MIB) + verity_reserve(fs_bytes)
            } else {
                fs_bytes
            };
            (
                round_up(header + PARTITION_OFFSET + data, align),
                fs_bytes,
                0,
            )
        }
    };

    let inner_bytes = total - header;
    let verity = if opts.verity {
        Some(make_verity(&fs_image, fs_bytes, scratch.path())?)
    } else {
        None
    };
    // partitions relative to an MBR: (start, bytes)
    let mut partitions = Vec::new();
    match &verity {
        None => partitions.push((PARTITION_OFFSET, inner_bytes - PARTITION_OFFSET)),
        Some((v, _)) => {
            let data_part = match opts.fs {
                Filesystem::Ext4 => fs_bytes,
                Filesystem::Erofs => round_up(fs_bytes, MIB),
            };
            let hash_start = PARTITION_OFFSET + data_part;
            if hash_start + v.hash_bytes > inner_bytes {
                bail!(
                    "verity: the hash tree ({} bytes) does not fit after the {} byte filesystem in a {} byte image",
                    v.hash_bytes,
                    fs_bytes,
                    inner_bytes
                );
            }
            partitions.push((PARTITION_OFFSET, data_part));
            partitions.push((hash_start, inner_bytes - hash_start));
        }
    }
    let signature = fs_uuid_signature(&fs_uuid);
    let inner_mbr = Mbr::with_partitions(signature, &partitions)?;
    let outer_partitions: Vec<(u64, u64)> =
        partitions.iter().map(|(s, b)| (s + header, *b)).collect();
    crate::util::write_atomically(out, |file| {
        file.set_len(total)?;
        if opts.dax {
            let outer = Mbr::with_partitions(signature, &outer_partitions)?;
            file.write_all_at(&outer.encode(), 0)?;
            file.write_all_at(&DaxHeader::for_namespace(total).encode(), DAX_INFO_OFFSET)?;
        }
        file.write_all_at(&inner_mbr.encode(), header)?;
        copy_sparse(&fs_image, file, header + PARTITION_OFFSET)?;
        if let (Some((_, hash_file)), Some((hash_start, _))) = (&verity, partitions.get(1)) {
            copy_sparse(hash_file, file, header + hash_start)?;
        }
        file.sync_all()?;
        Ok(())
    })?;
    Ok(ImageReport {
        bytes: total,
        fs_bytes,
        fs_free_bytes,
        partition_offset: header + PARTITION_OFFSET,
        partition_bytes: partitions[0].1,
        dax: opts.dax,
        verity: verity.map(|(mut v, _)| {
            v.hash_offset = partitions[1].0;
            v
        }),
    })
}

/// The hash tree of `fs_image` (`fs_bytes` long, a whole number of 4 KiB
/// blocks) in a file of `scratch`, by veritysetup, with a salt derived from
/// the filesystem's bytes.
fn make_verity(
    fs_image: &Path,
    fs_bytes: u64,
    scratch: &Path,
) -> Result<(Verity, std::path::PathBuf)> {
    use sha2::{Digest, Sha256};
    if !fs_bytes.is_multiple_of(EXT4_BLOCK_SIZE) {
        bail!("verity: the filesystem is {fs_bytes} bytes, not a whole number of 4 KiB blocks");
    }
    let mut hasher = Sha256::new();
    hasher.update(b"kata-osbuilder-rs verity salt\0");
    std::io::copy(&mut File::open(fs_image)?, &mut hasher)?;
    let salt = hex::encode(hasher.finalize());
    let hash_file = scratch.join("verity.hash");
    let out = Command::new("veritysetup")
        .args([
            "format",
            "--no-superblock",
            "--hash=sha256",
            "--data-block-size=4096",
            "--hash-block-size=4096",
        ])
        .arg(format!("--salt={salt}"))
        .arg(fs_image)
        .arg(&hash_file)
        .output()
        .context("run veritysetup (apt-get install cryptsetup-bin)")?;
    if !out.status.success() {
        bail!(
            "veritysetup format: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let root_hash = text
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .with_context(|| format!("veritysetup format printed no root hash: {text}"))?;
    let hash_bytes = std::fs::metadata(&hash_file)?.len();
    Ok((
        Verity {
            root_hash,
            salt,
            data_blocks: fs_bytes / EXT4_BLOCK_SIZE,
            data_block_size: EXT4_BLOCK_SIZE,
            hash_block_size: EXT4_BLOCK_SIZE,
            hash_offset: 0,
            hash_bytes,
        },
        hash_file,
    ))
}

fn round_up(v: u64, to: u64) -> u64 {
    v.div_ceil(to) * to
}

/// A generous lower bound for an ext4 filesystem holding `tree`: data
/// blocks, inode table share, journal and metadata slack. The build loop
/// grows the image if it is still too small.
fn ext4_size_estimate(tree: &Path) -> Result<u64> {
    let entries = list_tree(tree)?;
    let mut blocks = 0u64;
    for e in &entries {
        blocks += match &e.kind {
            EntryKind::Regular
                if e.link_group
                    .is_none_or(|(first, _)| std::ptr::eq(&entries[first], e)) =>
            {
                e.size.div_ceil(EXT4_BLOCK_SIZE) + 1
            }
            EntryKind::Directory => 2,
            EntryKind::Symlink(t) if t.len() >= 60 => 1,
            _ => 0,
        };
    }
    let data = blocks * EXT4_BLOCK_SIZE + entries.len() as u64 * 256;
    // Journal (mke2fs picks 16 MiB up to 1 GiB filesystems) and ~10% metadata.
    Ok(data + data / 10 + 20 * MIB)
}

enum Ext4Outcome {
    Built { free_bytes: u64 },
    TooSmall,
}

/// Our own mke2fs.conf, so the host's /etc/mke2fs.conf cannot change the
/// result: 4 KiB blocks (DAX), 256-byte inodes, the ext4 features of
/// e2fsprogs 1.47 minus orphan_file and metadata_csum_seed (unknown to some
/// older e2fsck), all supported by Linux 6.1.
const MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\tenable_periodic_fsck = 0
\tdefault_mntopts = acl,user_xattr

[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
\tdefault = {
\t}
";

fn make_ext4(
    tree: &Path,
    fs_image: &Path,
    fs_bytes: u64,
    opts: &ImageOptions,
    scratch: &Path,
) -> Result<Ext4Outcome> {
    let conf = scratch.join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF)?;
    let _ = std::fs::remove_file(fs_image);
    File::create(fs_image)?.set_len(fs_bytes)?;
    let epoch = opts.source_date_epoch.to_string();
    let ext_opts = format!(
        "hash_seed={},root_owner=0:0,lazy_itable_init=0,lazy_journal_init=0,nodiscard",
        opts.hash_seed
    );
    let mut mke2fs = Command::new("mke2fs");
    mke2fs
        .env("MKE2FS_CONFIG", &conf)
        .env("E2FSPROGS_FAKE_TIME", &epoch)
        .args([
            "-q", "-F", "-t", "ext4", "-T", "default", "-b", "4096", "-I", "256", "-m", "0",
        ])
        .args(["-U", &opts.fs_uuid, "-E", &ext_opts, "-d"])
        .arg(tree)
        .arg(fs_image);
    let out = run_tool(&mut mke2fs, "mke2fs (package e2fsprogs)")?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let full = [
            "Could not allocate block",
            "No space left",
            "Could not allocate inode",
            "too small",
        ];
        if full.iter().any(|m| stderr.contains(m)) {
            return Ok(Ext4Outcome::TooSmall);
        }
        bail!("mke2fs failed ({}): {}", out.status, stderr.trim());
    }

    // mke2fs copies ctime and atime from the host files: pin every inode's
    // times. Paths are quoted for debugfs; the tree walk rejects nothing,
    // so refuse names debugfs cannot quote. (A backslash is literal inside
    // debugfs's quotes: systemd's escaped unit names such as
    // `system-systemd\x2dcryptsetup.slice` need it.) A rootless tree's
    // owners and devices are set in the same pass.
    let record = crate::rootless::RootlessRecord::load(tree)?;
    let mut script = String::new();
    for e in list_tree(tree)? {
        let rel = String::from_utf8(e.rel.clone()).map_err(|_| {
            anyhow::anyhow!(
                "{}: non-UTF-8 file name cannot be fixed up by debugfs",
                e.host_path.display()
            )
        })?;
        if rel.contains(['"', '\n']) {
            bail!(
                "{}: file names with double quotes or newlines are not supported in ext4 images",
                e.host_path.display()
            );
        }
        if let Some(record) = &record {
            if record.modes.contains_key(&rel) {
                script.push_str(&format!(
                    "set_inode_field \"/{rel}\" mode 0{:o}\n",
                    e.mode_type_bits() | e.perm
                ));
            }
            if let EntryKind::CharDevice { major, minor }
            | EntryKind::BlockDevice { major, minor } = e.kind
            {
                let kind = if matches!(e.kind, EntryKind::CharDevice { .. }) {
                    'c'
                } else {
                    'b'
                };
                // debugfs's mknod takes a name in its current directory.
                let (parent, name) = rel.rsplit_once('/').unwrap_or(("", &rel));
                script.push_str(&format!(
                    "rm \"/{rel}\"\ncd \"/{parent}\"\nmknod \"{name}\" {kind} {major} {minor}\ncd /\nset_inode_field \"/{rel}\" mode 0{:o}\n",
                    e.mode_type_bits() | e.perm
                ));
            }
            for (field, id) in [("uid", e.uid), ("gid", e.gid)] {
                script.push_str(&format!("set_inode_field \"/{rel}\" {field} {id}\n"));
            }
        }
        for field in ["atime", "mtime", "ctime", "crtime"] {
            script.push_str(&format!("set_inode_field \"/{rel}\" {field} @{epoch}\n"));
        }
    }
    // The superblock counts the kilobytes each tool wrote; a rootless tree's
    // extra commands would make it differ from the same tree built as root.
    // Zero it: ext2fs only adds a session's writes to a nonzero count.
    script.push_str("set_super_value kbytes_written 0\n");
    let script_path = scratch.join("fix-times.debugfs");
    std::fs::write(&script_path, script)?;
    let mut debugfs = Command::new("debugfs");
    debugfs
        .env("E2FSPROGS_FAKE_TIME", &epoch)
        .arg("-w")
        .arg("-f")
        .arg(&script_path)
        .arg(fs_image);
    let out = run_tool(&mut debugfs, "debugfs (package e2fsprogs)")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // debugfs reports per-command errors on stderr but exits 0; its banner
    // is the only line expected there.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    if !out.status.success() || !errors.is_empty() {
        bail!("debugfs could not pin inode times: {}", errors.join("; "));
    }

    let mut dumpe2fs = Command::new("dumpe2fs");
    dumpe2fs.arg("-h").arg(fs_image);
    let out = run_tool(&mut dumpe2fs, "dumpe2fs (package e2fsprogs)")?;
    if !out.status.success() {
        bail!(
            "dumpe2fs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .with_context(|| format!("dumpe2fs -h printed no `{name}`"))
    };
    Ok(Ext4Outcome::Built {
        free_bytes: field("Free blocks:")? * field("Block size:")?,
    })
}

fn make_erofs(tree: &Path, fs_image: &Path, opts: &ImageOptions) -> Result<()> {
    let record = crate::rootless::RootlessRecord::load(tree)?;
    if let Some(record) = &record {
        if let Some(device) = record.devices.keys().next() {
            bail!(
                "{}: built without root, its device nodes (/{device}, ...) are placeholders that mkfs.erofs 1.5 cannot turn into devices; use --fs ext4, or build the tree as root",
                tree.display()
            );
        }
        if let Some(path) = record.modes.keys().next() {
            bail!(
                "{}: built without root, /{path} (and maybe more) has a mode on disk that mkfs.erofs 1.5 would copy instead of the recorded one; use --fs ext4, or build the tree as root",
                tree.display()
            );
        }
        if let Some(path) = record.owners.keys().next() {
            bail!(
                "{}: built without root, /{path} (and maybe more) belongs to another owner than root, which mkfs.erofs 1.5 can only take from the tree; use --fs ext4, or build the tree as root",
                tree.display()
            );
        }
        if record.owner != (0, 0) {
            bail!(
                "{}: built without root for owner {:?}; mkfs.erofs 1.5 can only make everything root's",
                tree.display(),
                record.owner
            );
        }
    }
    let mut mkfs = Command::new("mkfs.erofs");
    mkfs.arg("--quiet")
        .arg(format!("-T{}", opts.source_date_epoch))
        .arg(format!("-U{}", opts.fs_uuid));
    if record.is_some() {
        // Everything the record leaves is root's, as the checks above made sure.
        mkfs.arg("--all-root");
    }
    mkfs
        // No xattrs: recipes have none, and host labels must not leak in.
        .arg("-x-1")
        // As upstream: file tails in their own blocks, which DAX can map.
        .arg("-Enoinline_data")
        .arg(fs_image)
        .arg(tree);
    let out = run_tool(&mut mkfs, "mkfs.erofs (package erofs-utils)")?;
    if !out.status.success() {
        bail!(
            "mkfs.erofs failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_tool(cmd: &mut Command, what: &str) -> Result<std::process::Output> {
    cmd.output().with_context(|| {
        format!("cannot run {what}; is it installed? (`cargo xtask doctor --install`)")
    })
}

/// Copies `from` into `to` at `offset`, skipping all-zero chunks (the
/// destination was extended with zeros already), so images stay sparse.
fn copy_sparse(from: &Path, to: &File, offset: u64) -> Result<()> {
    let mut src = File::open(from)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut pos = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = src.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().any(|&b| b != 0) {
            to.write_all_at(&buf[..filled], offset + pos)?;
        }
        pos += filled as u64;
    }
    Ok(())
}

fn parse_uuid(s: &str) -> Result<[u8; 16]> {
    let hex_digits: String = s.chars().filter(|&c| c != '-').collect();
    let groups: Vec<usize> = s.split('-').map(str::len).collect();
    if groups != [8, 4, 4, 4, 12] || hex_digits.len() != 32 {
        bail!("`{s}` is not a UUID (xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx)");
    }
    let bytes = hex::decode(&hex_digits)
        .with_context(|| format!("`{s}` is not a UUID (hex digits expected)"))?;
    Ok(bytes.try_into().expect("32 hex digits"))
}

/// The MBR disk signature: fixed per filesystem UUID (tools like parted would
/// pick a random one).
fn fs_uuid_signature(uuid: &[u8; 16]) -> u32 {
    u32::from_le_bytes([uuid[0], uuid[1], uuid[2], uuid[3]])
}

/// One primary partition entry of an MBR.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MbrPartition {
    pub bootable: bool,
    pub partition_type: u8,
    pub first_lba: u32,
    pub sectors: u32,
}

/// A classic DOS master boot record (no boot code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mbr {
    pub disk_signature: u32,
    pub partitions: [Option<MbrPartition>; 4],
}

impl Mbr {
    pub const SIZE: usize = 512;
    const TABLE: usize = 446;

    /// Linux partitions, each `(start, bytes)`, in order (at most 4).
    pub fn with_partitions(disk_signature: u32, parts: &[(u64, u64)]) -> Result<Mbr> {
        if parts.is_empty() || parts.len() > 4 {
            bail!("an MBR holds 1 to 4 partitions, not {}", parts.len());
        }
        let mut mbr = Mbr {
            disk_signature,
            partitions: [None, None, None, None],
        };
        for (i, (start, bytes)) in parts.iter().enumerate() {
            let one = Mbr::single_partition(disk_signature, *start, *bytes)?;
            mbr.partitions[i] = one.partitions[0];
        }
        Ok(mbr)
    }

    /// One Linux partition of `bytes` starting at byte `start`.
    pub fn single_partition(disk_signature: u32, start: u64, bytes: u64) -> Result<Mbr> {
        if !start.is_multiple_of(SECTOR) || !bytes.is_multiple_of(SECTOR) {
            bail!("MBR partition start {start} and size {bytes} must be multiples of 512");
        }
        let first_lba =
            u32::try_from(start / SECTOR).context("MBR partition start beyond 2 TiB")?;
        let sectors = u32::try_from(bytes / SECTOR).context("MBR partition larger than 2 TiB")?;
        Ok(Mbr {
            disk_signature,
            partitions: [
                Some(MbrPartition {
                    bootable: false,
                    partition_type: MBR_TYPE_LINUX,
                    first_lba,
                    sectors,
                }),
                None,
                None,
                None,
            ],
        })
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[440..444].copy_from_slice(&self.disk_signature.to_le_bytes());
        for (i, p) in self.partitions.iter().enumerate() {
            let Some(p) = p else { continue };
            let e = &mut b[Self::TABLE + 16 * i..Self::TABLE + 16 * (i + 1)];
            e[0] = if p.bootable { 0x80 } else { 0 };
            e[1..4].copy_from_slice(&chs(p.first_lba));
            e[4] = p.partition_type;
            e[5..8].copy_from_slice(&chs(p.first_lba + p.sectors - 1));
            e[8..12].copy_from_slice(&p.first_lba.to_le_bytes());
            e[12..16].copy_from_slice(&p.sectors.to_le_bytes());
        }
        b[510] = 0x55;
        b[511] = 0xAA;
        b
    }

    pub fn decode(b: &[u8]) -> Result<Mbr> {
        if b.len() < Self::SIZE || b[510] != 0x55 || b[511] != 0xAA {
            bail!("not an MBR: missing the 0x55AA boot signature");
        }
        let mut partitions = [None; 4];
        for (i, slot) in partitions.iter_mut().enumerate() {
            let e = &b[Self::TABLE + 16 * i..Self::TABLE + 16 * (i + 1)];
            if e[4] == 0 {
                continue;
            }
            *slot = Some(MbrPartition {
                bootable: e[0] == 0x80,
                partition_type: e[4],
                first_lba: u32::from_le_bytes(e[8..12].try_into().unwrap()),
                sectors: u32::from_le_bytes(e[12..16].try_into().unwrap()),
            });
        }
        Ok(Mbr {
            disk_signature: u32::from_le_bytes(b[440..444].try_into().unwrap()),
            partitions,
        })
    }
}

/// CHS address of an LBA in the conventional 255-head, 63-sector geometry,
/// saturated at cylinder 1023 as partitioning tools do.
fn chs(lba: u32) -> [u8; 3] {
    const HEADS: u32 = 255;
    const SECTORS: u32 = 63;
    let (c, h, s) = {
        let c = lba / (HEADS * SECTORS);
        if c > 1023 {
            (1023, 254, 63)
        } else {
            (c, (lba / SECTORS) % HEADS, lba % SECTORS + 1)
        }
    };
    [
        h as u8,
        (s as u8 & 0x3f) | (((c >> 8) as u8 & 0x3) << 6),
        c as u8,
    ]
}

/// Fletcher-64 as the Linux NVDIMM driver computes it (`nd_fletcher64`):
/// over little-endian 32-bit words, a 32-bit running sum (wrapping) and a
/// 64-bit sum of those running sums; result `hi << 32 | lo`.
pub fn fletcher64(data: &[u8]) -> u64 {
    let mut lo: u32 = 0;
    let mut hi: u64 = 0;
    for word in data.chunks_exact(4) {
        lo = lo.wrapping_add(u32::from_le_bytes(word.try_into().unwrap()));
        hi = hi.wrapping_add(lo as u64);
    }
    (hi << 32) | lo as u64
}

/// `struct nd_pfn_sb` (Linux `drivers/nvdimm/pfn.h`), the 4 KiB info block
/// that turns the start of a pmem namespace into a pfn device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DaxHeader {
    pub uuid: [u8; 16],
    /// Must equal the namespace's uuid; label-less QEMU nvdimm namespaces have
    /// the nil uuid.
    pub parent_uuid: [u8; 16],
    pub flags: u32,
    pub version_major: u16,
    pub version_minor: u16,
    /// Where the data (here: MBR #2) starts, relative to the namespace.
    pub dataoff: u64,
    pub npfns: u64,
    pub mode: u32,
    pub start_pad: u32,
    pub end_trunc: u32,
    pub align: u32,
    pub page_size: u32,
    pub page_struct_size: u16,
}

impl DaxHeader {
    pub const SIZE: usize = 4096;
    pub const SIGNATURE: &'static [u8; 16] = b"NVDIMM_PFN_INFO\0";
    /// `enum nd_pfn_mode`: NONE = 0, RAM = 1, PMEM = 2.
    pub const MODE_RAM: u32 = 1;
    pub const OFF_UUID: usize = 16;
    pub const OFF_PARENT_UUID: usize = 32;
    pub const OFF_FLAGS: usize = 48;
    pub const OFF_VERSION_MAJOR: usize = 52;
    pub const OFF_VERSION_MINOR: usize = 54;
    pub const OFF_DATAOFF: usize = 56;
    pub const OFF_NPFNS: usize = 64;
    pub const OFF_MODE: usize = 72;
    pub const OFF_START_PAD: usize = 76;
    pub const OFF_END_TRUNC: usize = 80;
    pub const OFF_ALIGN: usize = 84;
    pub const OFF_PAGE_SIZE: usize = 88;
    pub const OFF_PAGE_STRUCT_SIZE: usize = 92;
    pub const OFF_CHECKSUM: usize = 4088;

    /// The header for a namespace (the whole image file) of `namespace_bytes`:
    /// mode RAM (page structs in RAM, nothing reserved on the device), data
    /// at 2 MiB, 2 MiB alignment for huge-page DAX mappings. Version 1.4 with
    /// page size 4 KiB and 64-byte struct page, as the 6.1 kernel itself
    /// writes; npfns counts the 4 KiB pages after the data offset.
    pub fn for_namespace(namespace_bytes: u64) -> DaxHeader {
        DaxHeader {
            uuid: [0; 16],
            parent_uuid: [0; 16],
            flags: 0,
            version_major: 1,
            version_minor: 4,
            dataoff: DAX_HEADER_BYTES,
            npfns: namespace_bytes.saturating_sub(DAX_HEADER_BYTES) / 4096,
            mode: Self::MODE_RAM,
            start_pad: 0,
            end_trunc: 0,
            align: DAX_HEADER_BYTES as u32,
            page_size: 4096,
            page_struct_size: 64,
        }
    }

    pub fn encode(&self) -> [u8; Self::SIZE] {
        let mut b = [0u8; Self::SIZE];
        b[..16].copy_from_slice(Self::SIGNATURE);
        b[Self::OFF_UUID..Self::OFF_UUID + 16].copy_from_slice(&self.uuid);
        b[Self::OFF_PARENT_UUID..Self::OFF_PARENT_UUID + 16].copy_from_slice(&self.parent_uuid);
        b[Self::OFF_FLAGS..][..4].copy_from_slice(&self.flags.to_le_bytes());
        b[Self::OFF_VERSION_MAJOR..][..2].copy_from_slice(&self.version_major.to_le_bytes());
        b[Self::OFF_VERSION_MINOR..][..2].copy_from_slice(&self.version_minor.to_le_bytes());
        b[Self::OFF_DATAOFF..][..8].copy_from_slice(&self.dataoff.to_le_bytes());
        b[Self::OFF_NPFNS..][..8].copy_from_slice(&self.npfns.to_le_bytes());
        b[Self::OFF_MODE..][..4].copy_from_slice(&self.mode.to_le_bytes());
        b[Self::OFF_START_PAD..][..4].copy_from_slice(&self.start_pad.to_le_bytes());
        b[Self::OFF_END_TRUNC..][..4].copy_from_slice(&self.end_trunc.to_le_bytes());
        b[Self::OFF_ALIGN..][..4].copy_from_slice(&self.align.to_le_bytes());
        b[Self::OFF_PAGE_SIZE..][..4].copy_from_slice(&self.page_size.to_le_bytes());
        b[Self::OFF_PAGE_STRUCT_SIZE..][..2].copy_from_slice(&self.page_struct_size.to_le_bytes());
        // The checksum covers the whole block with the checksum field zeroed.
        let sum = fletcher64(&b);
        b[Self::OFF_CHECKSUM..].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Parses an info block, verifying signature and checksum.
    pub fn decode(b: &[u8]) -> Result<DaxHeader> {
        if b.len() < Self::SIZE {
            bail!("DAX header: {} bytes, need {}", b.len(), Self::SIZE);
        }
        if &b[..16] != Self::SIGNATURE {
            bail!("DAX header: no NVDIMM_PFN_INFO signature");
        }
        let mut copy = [0u8; Self::SIZE];
        copy.copy_from_slice(&b[..Self::SIZE]);
        copy[Self::OFF_CHECKSUM..].fill(0);
        let stored = u64::from_le_bytes(b[Self::OFF_CHECKSUM..Self::SIZE].try_into().unwrap());
        if fletcher64(&copy) != stored {
            bail!("DAX header: checksum mismatch");
        }
        let u16_at = |o: usize| u16::from_le_bytes(b[o..o + 2].try_into().unwrap());
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        Ok(DaxHeader {
            uuid: b[Self::OFF_UUID..Self::OFF_UUID + 16].try_into().unwrap(),
            parent_uuid: b[Self::OFF_PARENT_UUID..Self::OFF_PARENT_UUID + 16]
                .try_into()
                .unwrap(),
            flags: u32_at(Self::OFF_FLAGS),
            version_major: u16_at(Self::OFF_VERSION_MAJOR),
            version_minor: u16_at(Self::OFF_VERSION_MINOR),
            dataoff: u64_at(Self::OFF_DATAOFF),
            npfns: u64_at(Self::OFF_NPFNS),
            mode: u32_at(Self::OFF_MODE),
            start_pad: u32_at(Self::OFF_START_PAD),
            end_trunc: u32_at(Self::OFF_END_TRUNC),
            align: u32_at(Self::OFF_ALIGN),
            page_size: u32_at(Self::OFF_PAGE_SIZE),
            page_struct_size: u16_at(Self::OFF_PAGE_STRUCT_SIZE),
        })
    }
}

/// Reads `len` bytes at `offset` of `path` (test and inspection helper).
pub fn read_at(path: &Path, offset: u64, len: usize) -> Result<Vec<u8>> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = vec![0u8; len];
    f.read_exact(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests;
