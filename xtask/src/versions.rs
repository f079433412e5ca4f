//! `versions.yaml`: the typed, strict loader of every pinned input.
//!
//! Unknown keys and wrong types are rejected with the file, the key path and
//! the line, because a typo in a pin file must never silently fall back to a
//! default. `--update` rewrites single values in place so the comments that
//! explain each pin survive.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::InputError;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Versions {
    /// The project's own (release) version.
    pub version: String,
    pub source_date_epoch: i64,
    pub distro: Distro,
    pub rust: RustPin,
    pub kernel: KernelPin,
    pub busybox: PackagedPin,
    pub reference_kernel: PackagedPin,
    pub qemu: HostToolPin,
    pub containerd: HostToolPin,
    pub vhost_device_vsock: CratePin,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Distro {
    pub name: String,
    pub suite: String,
    pub architecture: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RustPin {
    pub toolchain: String,
    pub musl_target: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KernelPin {
    pub version: String,
    pub kata_config_version: u32,
    pub debian: DebianPackagePin,
    #[serde(default)]
    pub upstream: Option<UpstreamPin>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
/// An input taken from one file of a Debian package.
pub struct PackagedPin {
    pub version: String,
    pub debian: DebianPackagePin,
}

/// A Debian binary package fetched with `apt-get download NAME=VERSION`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DebianPackagePin {
    pub package: String,
    pub version: String,
    pub sha256: Sha256Hex,
    /// The one file of the package the build uses.
    pub member: String,
}

/// A file fetched from a URL. An unpinned (null) digest means "known location,
/// not verified yet": such a source is never used.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamPin {
    pub url: String,
    pub sha256: Option<Sha256Hex>,
}

/// A tool used from the host rather than fetched into the build.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostToolPin {
    pub minimum_version: String,
    pub debian: HostPackage,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostPackage {
    pub package: String,
    pub version: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CratePin {
    pub version: String,
    #[serde(rename = "crate")]
    pub crate_name: String,
    pub sha256: Sha256Hex,
}

/// A lower-case hex sha256, validated at load time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Sha256Hex(s.to_string()))
        } else {
            Err(format!("`{s}` is not a sha256 (64 lower-case hex digits)"))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sha256Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sha256Hex::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The entries `versions --update` knows how to re-pin.
pub const UPDATABLE: &[&str] = &["kernel", "busybox", "vhost_device_vsock"];

impl Versions {
    pub fn load(path: &Path) -> Result<Versions, InputError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            InputError::new(format!(
                "{}: cannot read ({e}); pass another file with --versions FILE",
                path.display()
            ))
        })?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Versions, InputError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let v: Versions = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.inner();
            let loc = inner
                .location()
                .map(|l| format!("{}:{}:", l.line(), l.column()))
                .unwrap_or_default();
            // serde_yaml_ng appends " at line X column Y" to its message; the
            // location is already in front, so keep the message short.
            let mut msg = inner.to_string();
            if let Some(i) = msg.find(" at line ") {
                msg.truncate(i);
            }
            let key = if key == "." {
                String::new()
            } else {
                format!(" {key}:")
            };
            InputError::new(format!("{}:{loc}{key} {msg}", path.display()))
        })?;
        v.validate(path)?;
        Ok(v)
    }

    fn validate(&self, path: &Path) -> Result<(), InputError> {
        let bad = |key: &str, why: String| {
            Err(InputError::new(format!("{}: {key}: {why}", path.display())))
        };
        if self.source_date_epoch < 0 {
            return bad("source_date_epoch", "must not be negative".into());
        }
        if semver_like(&self.version).is_none() {
            return bad(
                "version",
                format!("`{}` is not a version like 1.2.3", self.version),
            );
        }
        if !self.kernel.debian.member.ends_with(".tar.xz") {
            return bad(
                "kernel.debian.member",
                format!(
                    "`{}` must name the source .tar.xz inside the package",
                    self.kernel.debian.member
                ),
            );
        }
        if self.kernel.kata_config_version == 0 {
            return bad("kernel.kata_config_version", "starts at 1".into());
        }
        if !SUPPORTED_ARCHITECTURES.contains(&self.distro.architecture.as_str()) {
            return bad(
                "distro.architecture",
                format!(
                    "`{}` is not supported: use one of {}",
                    self.distro.architecture,
                    SUPPORTED_ARCHITECTURES.join(", ")
                ),
            );
        }
        let debian = [
            ("kernel.debian", &self.kernel.debian),
            ("busybox.debian", &self.busybox.debian),
            ("reference_kernel.debian", &self.reference_kernel.debian),
        ];
        for (key, pin) in debian {
            check_package_name(&pin.package).or_else(|e| bad(&format!("{key}.package"), e))?;
            check_package_version(&pin.version).or_else(|e| bad(&format!("{key}.version"), e))?;
            check_member(&pin.member).or_else(|e| bad(&format!("{key}.member"), e))?;
        }
        for (key, pkg) in [
            ("qemu.debian", &self.qemu.debian),
            ("containerd.debian", &self.containerd.debian),
        ] {
            check_package_name(&pkg.package).or_else(|e| bad(&format!("{key}.package"), e))?;
            check_package_version(&pkg.version).or_else(|e| bad(&format!("{key}.version"), e))?;
        }
        Ok(())
    }

    /// The SOURCE_DATE_EPOCH in force: the environment overrides the pin.
    pub fn effective_epoch(&self) -> Result<i64, InputError> {
        match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(s) if !s.is_empty() => s.trim().parse::<i64>().ok().filter(|v| *v >= 0).ok_or_else(|| {
                InputError::new(format!(
                    "SOURCE_DATE_EPOCH=`{s}` is not a non-negative number of seconds; unset it to use versions.yaml's"
                ))
            }),
            _ => Ok(self.source_date_epoch),
        }
    }
}

/// Debian architectures the kernel configs and the agent target exist for.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &["amd64"];

/// Debian policy 5.6.1: `[a-z0-9][a-z0-9+.-]+`. Checked before a name
/// reaches apt-get, where an option-like or spaced name would mean
/// something else.
fn check_package_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    if b.len() >= 2
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'+' | b'.' | b'-')
        })
    {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a Debian package name ([a-z0-9][a-z0-9+.-]+)"
        ))
    }
}

/// Debian policy 5.6.12: `[epoch:]upstream[-revision]`, the epoch digits,
/// the rest `[A-Za-z0-9.+~-]`, starting with a digit.
fn check_package_version(version: &str) -> Result<(), String> {
    let (epoch, rest) = match version.split_once(':') {
        Some((e, r)) => (Some(e), r),
        None => (None, version),
    };
    let epoch_ok = epoch.is_none_or(|e| !e.is_empty() && e.bytes().all(|c| c.is_ascii_digit()));
    let rest_ok = rest.as_bytes().first().is_some_and(u8::is_ascii_digit)
        && rest
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'+' | b'~' | b'-'));
    if epoch_ok && rest_ok {
        Ok(())
    } else {
        Err(format!(
            "`{version}` is not a Debian version ([epoch:]upstream[-revision])"
        ))
    }
}

/// A path inside a package: relative, plain components only, ending in a
/// file name. It is joined to the unpack directory, so `..` or an absolute
/// path would name something outside it.
fn check_member(member: &str) -> Result<(), String> {
    use std::path::Component;
    let p = Path::new(member);
    let plain = !member.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)));
    if plain && !member.ends_with('/') && p.file_name().is_some() {
        Ok(())
    } else {
        Err(format!(
            "`{member}` must be a relative path to a file inside the package (no leading /, no .., e.g. usr/src/linux-source-6.1.tar.xz)"
        ))
    }
}

fn semver_like(v: &str) -> Option<()> {
    let core = v.split(['-', '+']).next()?;
    let parts: Vec<_> = core.split('.').collect();
    (parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
    .then_some(())
}

/// Rewrites one scalar at `key_path` in YAML text, keeping everything else
/// (comments, order, quoting style of other values) as it is.
pub fn rewrite_scalar(text: &str, key_path: &[&str], new_value: &str) -> Result<String, String> {
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut out = String::with_capacity(text.len() + 64);
    let mut done = false;
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let trimmed = body.trim_start();
        if done || trimmed.is_empty() || trimmed.starts_with('#') {
            out.push_str(line);
            continue;
        }
        let indent = body.len() - trimmed.len();
        let Some((key, rest)) = trimmed.split_once(':') else {
            out.push_str(line);
            continue;
        };
        while stack.last().is_some_and(|(i, _)| *i >= indent) {
            stack.pop();
        }
        stack.push((indent, key.trim().to_string()));
        let path: Vec<&str> = stack.iter().map(|(_, k)| k.as_str()).collect();
        if path == key_path {
            // Keep a trailing comment if there is one.
            let comment = rest.find(" #").map(|i| &rest[i..]).unwrap_or("");
            let eol = &line[body.len()..];
            out.push_str(&format!(
                "{}{}: {}{}{}",
                &body[..indent],
                key.trim(),
                new_value,
                comment,
                eol
            ));
            done = true;
        } else {
            out.push_str(line);
        }
    }
    if done {
        Ok(out)
    } else {
        Err(format!("no key {} in the file", key_path.join(".")))
    }
}

/// Quote a YAML scalar only when it needs it (colons, leading digits that
/// would read as numbers, ...): plain strings stay plain.
pub fn yaml_string(s: &str) -> String {
    let plain = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
        && !s.starts_with(|c: char| c.is_ascii_digit());
    if plain {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

pub fn default_path(root: &Path) -> PathBuf {
    root.join("versions.yaml")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_file() -> String {
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../versions.yaml")).unwrap()
    }

    fn err_of(text: &str) -> String {
        Versions::parse(text, Path::new("v.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn repository_versions_file_loads() {
        let v = Versions::parse(&repo_file(), Path::new("versions.yaml")).unwrap();
        assert_eq!(v.rust.musl_target, "x86_64-unknown-linux-musl");
        assert!(v.kernel.debian.package.starts_with("linux-source-"));
    }

    #[test]
    fn rust_toolchain_file_pins_the_versions_yaml_toolchain() {
        let v = Versions::parse(&repo_file(), Path::new("versions.yaml")).unwrap();
        let toml = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../rust-toolchain.toml"
        ))
        .unwrap();
        // A hand parse of the one key: xtask has no TOML parser, and the file
        // is ours and simple.
        let channel = toml
            .lines()
            .filter_map(|l| l.trim().strip_prefix("channel"))
            .filter_map(|rest| rest.trim_start().strip_prefix('='))
            .map(|value| value.trim().trim_matches('"').to_string())
            .next()
            .expect("rust-toolchain.toml has a channel");
        assert_eq!(
            channel, v.rust.toolchain,
            "rust-toolchain.toml and versions.yaml rust.toolchain disagree"
        );
        assert!(
            toml.contains(&format!("\"{}\"", v.rust.musl_target)),
            "rust-toolchain.toml lists the musl target"
        );
    }

    fn parse_repo_with(from: &str, to: &str) -> Result<Versions, InputError> {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../versions.yaml"))
                .unwrap();
        assert!(
            text.contains(from),
            "versions.yaml no longer contains {from:?}"
        );
        Versions::parse(&text.replacen(from, to, 1), Path::new("versions.yaml"))
    }

    #[test]
    fn semantic_rules_name_the_key() {
        let cases = [
            ("version: \"0.1.0\"", "version: \"0.1\"", "version:"),
            (
                "source_date_epoch: 1735689600",
                "source_date_epoch: -1",
                "source_date_epoch:",
            ),
            (
                "kata_config_version: 1",
                "kata_config_version: 0",
                "kernel.kata_config_version:",
            ),
            (
                "architecture: amd64",
                "architecture: sparc",
                "distro.architecture:",
            ),
            (
                "member: usr/src/linux-source-6.1.tar.xz",
                "member: ../../etc/passwd.tar.xz",
                "kernel.debian.member:",
            ),
            (
                "member: usr/src/linux-source-6.1.tar.xz",
                "member: /usr/src/linux-source-6.1.tar.xz",
                "kernel.debian.member:",
            ),
            (
                "member: bin/busybox",
                "member: bin/",
                "busybox.debian.member:",
            ),
            (
                "member: bin/busybox",
                "member: \"\"",
                "busybox.debian.member:",
            ),
            (
                "member: bin/busybox",
                "member: bin/../../x",
                "busybox.debian.member:",
            ),
            (
                "package: busybox-static",
                "package: \"-o APT::Get=1\"",
                "busybox.debian.package:",
            ),
            (
                "package: busybox-static",
                "package: Busybox",
                "busybox.debian.package:",
            ),
            (
                "version: \"1:1.35.0-4+deb12u1+b1\"",
                "version: \"1:1.35 --allow\"",
                "busybox.debian.version:",
            ),
            (
                "version: \"1:1.35.0-4+deb12u1+b1\"",
                "version: \"x:1.35\"",
                "busybox.debian.version:",
            ),
        ];
        for (from, to, key) in cases {
            let e = parse_repo_with(from, to)
                .map(|_| ())
                .unwrap_err()
                .to_string();
            assert!(
                e.starts_with("versions.yaml: ") && e.contains(key),
                "{to}: {e}"
            );
        }
    }

    #[test]
    fn source_date_epoch_from_the_environment_is_checked() {
        // Only this test touches the variable in this process's tests.
        let v = parse_repo_with("version: \"0.1.0\"", "version: \"0.1.0\"").unwrap();
        let set = |value: Option<&str>| {
            // SAFETY: set_var/remove_var are unsound only against another
            // thread reading the environment at the same moment through
            // libc; no other test of this binary reads SOURCE_DATE_EPOCH,
            // and a child another test spawns meanwhile ignores it.
            unsafe {
                match value {
                    Some(v) => std::env::set_var("SOURCE_DATE_EPOCH", v),
                    None => std::env::remove_var("SOURCE_DATE_EPOCH"),
                }
            }
        };
        set(Some("-5"));
        let e = v.effective_epoch().unwrap_err().to_string();
        set(Some("42"));
        let ok = v.effective_epoch().unwrap();
        set(None);
        assert!(e.contains("SOURCE_DATE_EPOCH"), "{e}");
        assert_eq!(ok, 42);
        assert_eq!(v.effective_epoch().unwrap(), v.source_date_epoch);
    }

    #[test]
    fn unknown_key_names_file_path_and_line() {
        let text = repo_file().replace(
            "  suite: bookworm\n",
            "  suite: bookworm\n  flavour: stable\n",
        );
        let e = err_of(&text);
        assert!(e.starts_with("v.yaml:"), "{e}");
        assert!(e.contains("distro"), "{e}");
        assert!(e.contains("unknown field `flavour`"), "{e}");
        let line = text.lines().position(|l| l.contains("flavour")).unwrap() + 1;
        assert!(e.contains(&format!(":{line}:")), "want line {line}: {e}");
    }

    #[test]
    fn wrong_type_names_key_path() {
        let text = repo_file().replace("kata_config_version: 1", "kata_config_version: one");
        let e = err_of(&text);
        assert!(e.contains("kernel.kata_config_version"), "{e}");
        assert!(e.contains("invalid type"), "{e}");
    }

    #[test]
    fn bad_digest_is_rejected_with_key() {
        let text = repo_file().replace(
            "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744",
            "3d3fdbe9",
        );
        let e = err_of(&text);
        assert!(e.contains("busybox.debian.sha256"), "{e}");
        assert!(e.contains("not a sha256"), "{e}");
    }

    #[test]
    fn malformed_yaml_names_line() {
        let e = err_of("version: \"0.1.0\"\ndistro: [unclosed\n");
        assert!(e.starts_with("v.yaml:"), "{e}");
        assert!(e.contains(":2:") || e.contains(":3:"), "{e}");
    }

    #[test]
    fn missing_key_is_named() {
        let text =
            repo_file().replace("source_date_epoch: 1735689600 # 2025-01-01T00:00:00Z\n", "");
        let e = err_of(&text);
        assert!(e.contains("missing field `source_date_epoch`"), "{e}");
    }

    #[test]
    fn rewrite_keeps_comments_and_other_values() {
        let text = repo_file();
        let out =
            rewrite_scalar(&text, &["busybox", "debian", "version"], "\"1:9.9.9-1\"").unwrap();
        assert!(out.contains("    version: \"1:9.9.9-1\"\n"));
        // The kernel's debian.version is a different key path and stays.
        assert!(out.contains("    version: \"6.1.192-2\""));
        assert_eq!(
            out.lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .count(),
            text.lines()
                .filter(|l| l.trim_start().starts_with('#'))
                .count()
        );
        let v = Versions::parse(&out, Path::new("x")).unwrap();
        assert_eq!(v.busybox.debian.version, "1:9.9.9-1");
        assert!(rewrite_scalar(&text, &["busybox", "nope"], "x").is_err());
    }

    #[test]
    fn yaml_string_quotes_only_when_needed() {
        assert_eq!(yaml_string("busybox-static"), "busybox-static");
        assert_eq!(yaml_string("1:1.35.0-4"), "\"1:1.35.0-4\"");
        assert_eq!(yaml_string("6.1.1"), "\"6.1.1\"");
    }
}
