//! Release packaging for `cargo xtask release`.
//!
//! This crate turns already-built artifacts (shim, runtime, helper daemons,
//! guest kernels, images, the rendered `configuration.toml`) into the files a
//! release publishes: the upstream-shaped static tarball
//! (`kata-static-<version>-x86_64.tar.zst`, rooted at `./opt/kata`), a Debian
//! package, an RPM, `SHA256SUMS` and an SPDX 2.3 SBOM.
//!
//! Everything is reproducible: archive entries are sorted, owned by 0:0
//! (`root`/`root`), stamped with `SOURCE_DATE_EPOCH`, and compressed with
//! fixed settings whose output does not depend on the number of worker
//! threads ([`compress`]), so the same inputs give the same bytes no matter
//! where they live on disk or how many cores the host has. Every archive is read back after it is
//! written and refused if it could damage a host when unpacked into `/`
//! (see [`safety`]). Outputs are written to a temporary file next to the
//! destination and renamed into place.
//!
//! The entry point is [`Layout`]: a typed description of the tree under the
//! install prefix, built from [`ReleaseInputs`] by [`Layout::from_inputs`].

pub mod checksums;
pub mod compress;
pub mod config;
pub mod deb;
pub mod layout;
pub mod rpm_package;
pub mod safety;
pub mod sbom;
pub mod tarball;

mod ar;
mod util;

pub use checksums::write_sha256sums;
pub use config::render_configuration;
pub use deb::{debian_version, write_deb, DebMeta};
pub use layout::{EntryKind, Layout, ReleaseInputs};
pub use rpm_package::{rpm_version, write_rpm, RpmMeta};
pub use safety::{
    check_host_safety_deb, check_host_safety_layout, check_host_safety_rpm,
    check_host_safety_tarball, SafetyViolation,
};
pub use sbom::{write_spdx_sbom, HelperLock, Pin, SbomInputs};
pub use tarball::{tarball_name, write_tarball};
