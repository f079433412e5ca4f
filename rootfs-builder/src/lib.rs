//! rootfs-builder: turns an image recipe (`image-recipes/NAME.yaml`) plus
//! already fetched, verified inputs (static busybox, static kata-agent) into a
//! guest rootfs tree, and that tree into the artifacts the VM boots: a
//! compressed cpio newc initrd, or a raw disk image (ext4 or erofs, MBR,
//! optional NVDIMM/DAX header). It never fetches or caches anything: the
//! caller (xtask) owns inputs and caching; this crate only builds, and builds
//! deterministically (same inputs, same bytes).

pub mod cpio;
pub mod debian;
pub mod image;
pub mod packages;
pub mod recipe;
pub mod rootless;
pub mod tar;
pub mod tree;
mod util;
mod walk;

pub use cpio::{write_cpio, write_initrd, Compression};
pub use image::{
    build_image, fletcher64, DaxHeader, Filesystem, ImageOptions, ImageReport, Mbr, MbrPartition,
};
pub use recipe::{InitMode, Recipe, RecipeError};
pub use rootless::{Privileges, RootlessRecord};
pub use tar::{content_digest, tree_digest, write_tree_tar};
pub use tree::{build_rootfs, check_rootfs, InputInfo, OsbuilderInfo, RootfsInputs};
