//! The one registry of host tools: every program or file the pipeline and
//! its tests use from the host, with the Debian package that provides it.
//!
//! Steps name the entries they run (`Step::tools` in graph.rs), and the
//! executor checks those of the steps that will actually run before any
//! work starts; `cargo xtask doctor` checks every entry and installs the
//! packages. One list, so a tool a step starts using is also one doctor
//! installs.

use anyhow::Result;

use crate::error::InputError;

/// How to tell a tool is there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// A program on PATH.
    Program(&'static str),
    /// A file (headers, a program outside PATH).
    File(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostTool {
    /// The name users know it by (a program name, a package name).
    pub name: &'static str,
    pub probe: Probe,
    /// The Debian package that provides it.
    pub package: &'static str,
    pub needed_for: &'static str,
}

impl HostTool {
    const fn program(name: &'static str, package: &'static str, needed_for: &'static str) -> Self {
        HostTool {
            name,
            probe: Probe::Program(name),
            package,
            needed_for,
        }
    }

    const fn file(
        name: &'static str,
        path: &'static str,
        package: &'static str,
        needed_for: &'static str,
    ) -> Self {
        HostTool {
            name,
            probe: Probe::File(path),
            package,
            needed_for,
        }
    }

    /// What is wrong, if the tool is missing.
    pub fn problem(&self) -> Option<String> {
        match self.probe {
            Probe::Program(p) => crate::tools::which(p)
                .is_none()
                .then(|| format!("`{p}` is not on PATH")),
            Probe::File(f) => {
                (!std::path::Path::new(f).exists()).then(|| format!("{f} is missing"))
            }
        }
    }
}

pub const APT_GET: HostTool =
    HostTool::program("apt-get", "apt", "fetching pinned Debian packages");
pub const DPKG_DEB: HostTool =
    HostTool::program("dpkg-deb", "dpkg", "unpacking pinned Debian packages");
pub const MMDEBSTRAP: HostTool = HostTool::program(
    "mmdebstrap",
    "mmdebstrap",
    "installing the Debian system of `init: systemd` guests",
);
pub const NEWUIDMAP: HostTool = HostTool::program(
    "newuidmap",
    "uidmap",
    "mmdebstrap's unshare mode, for `init: systemd` guests built without root",
);
pub const DEPMOD: HostTool = HostTool::program(
    "depmod",
    "kmod",
    "indexing the module flavour's kernel modules (`kernel --modules`)",
);
pub const CURL: HostTool = HostTool::program("curl", "curl", "fetching upstream URLs");
pub const MKE2FS: HostTool = HostTool::program("mke2fs", "e2fsprogs", "ext4 rootfs images");
pub const E2FSCK: HostTool = HostTool::program("e2fsck", "e2fsprogs", "checking images");
pub const DEBUGFS: HostTool =
    HostTool::program("debugfs", "e2fsprogs", "deterministic ext4 images");
pub const MKFS_EROFS: HostTool =
    HostTool::program("mkfs.erofs", "erofs-utils", "erofs rootfs images");
pub const VERITYSETUP: HostTool = HostTool::program(
    "veritysetup",
    "cryptsetup-bin",
    "dm-verity images (--verity) and their checks",
);
pub const TAR: HostTool = HostTool::program("tar", "tar", "reading the pinned crate's lock file");
pub const MUSL_GCC: HostTool =
    HostTool::program("musl-gcc", "musl-tools", "C parts of the static binaries");
pub const MAKE: HostTool = HostTool::program("make", "make", "the kernel build");
pub const GCC: HostTool = HostTool::program("gcc", "gcc", "the kernel build");
pub const FLEX: HostTool = HostTool::program("flex", "flex", "the kernel build");
pub const BISON: HostTool = HostTool::program("bison", "bison", "the kernel build");
pub const BC: HostTool = HostTool::program("bc", "bc", "the kernel build");
pub const PATCH: HostTool =
    HostTool::program("patch", "patch", "kernel and vhost-device-vsock patches");
pub const XZ: HostTool = HostTool::program("xz", "xz-utils", "the kernel source tarball");
pub const LIBELF: HostTool = HostTool::file(
    "libelf-dev",
    "/usr/include/libelf.h",
    "libelf-dev",
    "the kernel build (objtool)",
);
pub const LIBSSL: HostTool = HostTool::file(
    "libssl-dev",
    "/usr/include/openssl/ssl.h",
    "libssl-dev",
    "the kernel build (certs tooling)",
);

/// The tests' and benchmarks' tools (the harness checks them itself).
pub const CPIO: HostTool =
    HostTool::program("cpio", "cpio", "independent initrd checks in the tests");
pub const ZSTD: HostTool = HostTool::program(
    "zstd",
    "zstd",
    "zstd initrds and the release tarball checks",
);
pub const READELF: HostTool = HostTool::program(
    "readelf",
    "binutils",
    "checking the agent is static (tests)",
);
pub const RPM: HostTool = HostTool::program("rpm", "rpm", "checking the release .rpm");
pub const LINTIAN: HostTool = HostTool::program("lintian", "lintian", "checking the release .deb");
pub const BUSYBOX: HostTool = HostTool::file(
    "busybox",
    "/bin/busybox",
    "busybox-static",
    "the kernel boot test's shell",
);
pub const VIRTIOFSD: HostTool = HostTool::file(
    "virtiofsd",
    "/usr/lib/qemu/virtiofsd",
    "qemu-system-common",
    "sharing container rootfs",
);
pub const CONTAINERD: HostTool =
    HostTool::program("containerd", "containerd", "the end-to-end container test");
pub const CTR: HostTool = HostTool::program("ctr", "containerd", "the end-to-end container test");
pub const GZIP: HostTool = HostTool::program("gzip", "gzip", "the e2e test image's layer");
pub const RUNC: HostTool =
    HostTool::program("runc", "runc", "the start-latency benchmark baseline");
/// The CRI test's pod network (bridge, host-local IPAM, loopback), which
/// containerd's CRI plugin runs from /usr/lib/cni.
pub const CNI_PLUGINS: HostTool = HostTool::file(
    "cni-plugins",
    "/usr/lib/cni/bridge",
    "containernetworking-plugins",
    "the CRI test's pod network",
);
/// k8s-cri (the CRI test's gRPC client, in xtask-test) compiles the CRI
/// protos at build time with protoc.
pub const PROTOC: HostTool = HostTool::program(
    "protoc",
    "protobuf-compiler",
    "building the test harness (CRI protos)",
);
/// `ip netns`: the CRI test runs containerd in a netns of its own.
pub const IPROUTE2: HostTool =
    HostTool::program("ip", "iproute2", "the CRI test's network namespace");

/// Every entry, in the order doctor lists them.
pub const ALL: &[HostTool] = &[
    APT_GET,
    DPKG_DEB,
    MMDEBSTRAP,
    NEWUIDMAP,
    DEPMOD,
    MKE2FS,
    E2FSCK,
    DEBUGFS,
    MKFS_EROFS,
    VERITYSETUP,
    CPIO,
    ZSTD,
    READELF,
    RPM,
    LINTIAN,
    BUSYBOX,
    MUSL_GCC,
    MAKE,
    GCC,
    FLEX,
    BISON,
    BC,
    PATCH,
    XZ,
    LIBELF,
    LIBSSL,
    CURL,
    TAR,
    VIRTIOFSD,
    CONTAINERD,
    CTR,
    GZIP,
    RUNC,
    CNI_PLUGINS,
    PROTOC,
    IPROUTE2,
];

/// Fails with one clear line naming every missing tool of `needs`
/// (`(who needs it, tools)` pairs) and the packages that provide them.
pub fn require(needs: &[(&str, &[HostTool])]) -> Result<()> {
    let mut missing: Vec<String> = Vec::new();
    let mut packages: Vec<&str> = Vec::new();
    for (who, tools) in needs {
        for t in tools.iter() {
            if t.problem().is_some() {
                missing.push(format!("{} (package {}) for {who}", t.name, t.package));
                packages.push(t.package);
            }
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    packages.sort();
    packages.dedup();
    Err(anyhow::Error::new(InputError::new(format!(
        "host tools missing: {}; install them with `apt-get install -y {}` (or `cargo xtask doctor --install`)",
        missing.join(", "),
        packages.join(" ")
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_listed_once() {
        for (i, t) in ALL.iter().enumerate() {
            assert!(
                !ALL[i + 1..].iter().any(|o| o.name == t.name),
                "{} is listed twice",
                t.name
            );
        }
    }

    #[test]
    fn a_missing_tool_names_it_and_its_package() {
        let fake = HostTool::program("surely-not-a-real-program-xyz", "xyz-utils", "testing");
        let e = require(&[("demo", &[fake, TAR])]).unwrap_err().to_string();
        assert!(
            e.contains("surely-not-a-real-program-xyz (package xyz-utils) for demo"),
            "{e}"
        );
        assert!(e.contains("apt-get install -y xyz-utils`"), "{e}");
        assert!(require(&[("demo", &[HostTool::program("sh", "dash", "x")])]).is_ok());
    }
}
