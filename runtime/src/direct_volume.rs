//! Direct-assigned volumes: a block device (or disk image) the operator
//! hands to the VM instead of sharing a host directory, declared before the
//! container that mounts it with `kata-runtime direct-volume add`.
//!
//! The store is upstream's, so tools written for upstream Kata read and
//! write the same files: below [`ROOT`], one directory per volume path,
//! named by the path's URL-safe padded base64, holding `mountInfo.json`
//! (the operator's JSON, as given) and, once a sandbox uses the volume, an
//! empty file named after that sandbox.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine;
use serde::{Deserialize, Serialize};

/// Upstream's root of the store.
pub const ROOT: &str = "/run/kata-containers/shared/direct-volumes";
/// The mount information's file name in a volume's directory.
pub const MOUNT_INFO_FILE: &str = "mountInfo.json";

/// What `--mount-info` says about a volume. Key names are upstream's
/// (`volume-type`, `fstype`); keys it does not know are ignored, as there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountInfo {
    /// "block" for a block device or a disk image file.
    #[serde(rename = "volume-type")]
    pub volume_type: String,
    /// The host block device or regular file holding the filesystem.
    pub device: String,
    /// The filesystem the guest mounts it as (e.g. ext4).
    pub fstype: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Mount options in the guest (e.g. "ro").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl MountInfo {
    pub fn read_only(&self) -> bool {
        self.options.iter().any(|o| o == "ro")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DirectVolumeError {
    #[error("--volume-path {0:?}: must be an absolute path (the source a container mounts)")]
    BadVolumePath(String),
    #[error("--mount-info: {0}")]
    BadMountInfo(String),
    #[error("volume {0} was never added (`kata-runtime direct-volume add --volume-path {0} --mount-info JSON` adds it)")]
    NotAdded(String),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, DirectVolumeError>;

/// The directory name of `volume_path` in the store (URL-safe alphabet,
/// `=` padding: upstream's `base64.URLEncoding`).
pub fn dir_name(volume_path: &str) -> String {
    base64::engine::general_purpose::URL_SAFE.encode(volume_path)
}

fn check_volume_path(volume_path: &str) -> Result<()> {
    if !Path::new(volume_path).is_absolute() {
        return Err(DirectVolumeError::BadVolumePath(volume_path.into()));
    }
    Ok(())
}

/// Parses and checks `--mount-info`: what a container start would
/// otherwise fail on, much later and in the shim's log.
pub fn parse_mount_info(text: &str) -> Result<MountInfo> {
    let info: MountInfo = serde_json::from_str(text).map_err(|e| {
        DirectVolumeError::BadMountInfo(format!(
            "{e}; expected e.g. {{\"volume-type\":\"block\",\"device\":\"/dev/sdb\",\"fstype\":\"ext4\",\"options\":[\"ro\"]}}"
        ))
    })?;
    let bad = |m: String| Err(DirectVolumeError::BadMountInfo(m));
    if info.volume_type != "block" {
        return bad(format!(
            "\"volume-type\" is {:?}; this runtime handles \"block\" (a block device or disk image)",
            info.volume_type
        ));
    }
    if !Path::new(&info.device).is_absolute() {
        return bad(format!(
            "\"device\" is {:?}; it must be the absolute path of a block device or disk image on the host",
            info.device
        ));
    }
    if info.fstype.is_empty()
        || info
            .fstype
            .contains(|c: char| c == ',' || c.is_whitespace())
    {
        return bad(format!(
            "\"fstype\" is {:?}; it must name the filesystem on the device, e.g. \"ext4\"",
            info.fstype
        ));
    }
    Ok(info)
}

/// `direct-volume add`: records `mount_info` (checked, then written as
/// given) for `volume_path`, replacing an earlier record. The file appears
/// whole or not at all.
pub fn add(root: &Path, volume_path: &str, mount_info: &str) -> Result<PathBuf> {
    check_volume_path(volume_path)?;
    parse_mount_info(mount_info)?;
    let rel = PathBuf::from(dir_name(volume_path));
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| DirectVolumeError::Io { what, path, source }
    };
    let dir = crate::state_fs::create_below(root, &rel, 0o700)
        .map_err(io("create the volume directory", &root.join(&rel)))?;
    let file = dir.join(MOUNT_INFO_FILE);
    let mut tmp = tempfile::Builder::new()
        .prefix(".mountInfo")
        .tempfile_in(&dir)
        .map_err(io("create a file in", &dir))?;
    // tempfile creates it 0600, upstream's mode for this file.
    tmp.write_all(mount_info.as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io("write", tmp.path()))?;
    tmp.persist(&file).map_err(|e| DirectVolumeError::Io {
        what: "write",
        path: file.clone(),
        source: e.error,
    })?;
    Ok(file)
}

/// `direct-volume remove`: forgets `volume_path`.
pub fn remove(root: &Path, volume_path: &str) -> Result<()> {
    check_volume_path(volume_path)?;
    let rel = PathBuf::from(dir_name(volume_path));
    match crate::state_fs::remove_below(root, &rel) {
        Ok(crate::state_fs::Removal::Absent) => {
            Err(DirectVolumeError::NotAdded(volume_path.into()))
        }
        Ok(_) => Ok(()),
        Err(source) => Err(DirectVolumeError::Io {
            what: "remove",
            path: root.join(rel),
            source,
        }),
    }
}

/// The mount information recorded for `volume_path`, if it was added.
pub fn mount_info(root: &Path, volume_path: &str) -> Result<Option<MountInfo>> {
    if !Path::new(volume_path).is_absolute() {
        return Ok(None);
    }
    let rel = Path::new(&dir_name(volume_path)).join(MOUNT_INFO_FILE);
    let bytes =
        crate::state_fs::read_below(root, &rel).map_err(|source| DirectVolumeError::Io {
            what: "read",
            path: root.join(&rel),
            source,
        })?;
    match bytes {
        None => Ok(None),
        Some(b) => parse_mount_info(&String::from_utf8_lossy(&b)).map(Some),
    }
}

/// Notes that sandbox `sid` uses `volume_path` (an empty file named `sid`),
/// which `stats` and `resize` use to find the sandbox's shim.
pub fn record_sandbox(root: &Path, volume_path: &str, sid: &str) -> Result<()> {
    protocols::ids::check_id("sandbox id", sid)
        .map_err(|m| DirectVolumeError::BadVolumePath(format!("{volume_path}: {m}")))?;
    let dir = root.join(dir_name(volume_path));
    let path = dir.join(sid);
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map(drop)
        .map_err(|source| DirectVolumeError::Io {
            what: "record the sandbox in",
            path,
            source,
        })
}

/// Undoes [`record_sandbox`] (the volume may be removed already).
pub fn forget_sandbox(root: &Path, volume_path: &str, sid: &str) {
    let path = root.join(dir_name(volume_path)).join(sid);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => log::warn!("direct volume: remove {}: {e}", path.display()),
    }
}

/// The sandbox that uses `volume_path`: `Err(NotAdded)` if it was never
/// added, `None` if no running sandbox mounts it.
pub fn sandbox_of(root: &Path, volume_path: &str) -> Result<Option<String>> {
    check_volume_path(volume_path).map_err(|_| DirectVolumeError::NotAdded(volume_path.into()))?;
    let dir = root.join(dir_name(volume_path));
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DirectVolumeError::NotAdded(volume_path.into()))
        }
        Err(source) => {
            return Err(DirectVolumeError::Io {
                what: "read",
                path: dir,
                source,
            })
        }
    };
    let mut names: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != MOUNT_INFO_FILE && !n.starts_with('.'))
        .collect();
    names.sort();
    Ok(names.into_iter().next())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str =
        r#"{"volume-type":"block","device":"/dev/sdb","fstype":"ext4","options":["ro"],"extra":1}"#;

    #[test]
    fn directory_names_are_upstreams_base64() {
        // kata-ctl's vector: URL-safe alphabet, padded.
        assert_eq!(dir_name("abcdddd"), "YWJjZGRkZA==");
        // '/' and '+' of the standard alphabet never appear.
        let name = dir_name("/mnt/volumes/??>>~~");
        assert!(!name.contains('/') && !name.contains('+'), "{name}");
    }

    #[test]
    fn mount_info_keys_are_upstreams_and_checked() {
        let info = parse_mount_info(INFO).unwrap();
        assert_eq!(info.device, "/dev/sdb");
        assert_eq!(info.fstype, "ext4");
        assert!(info.read_only());
        for (bad, says) in [
            ("{", "EOF"),
            (
                r#"{"volume_type":"block","device":"/d","fstype":"ext4"}"#,
                "volume-type",
            ),
            (
                r#"{"volume-type":"nfs","device":"/d","fstype":"ext4"}"#,
                "\"block\"",
            ),
            (
                r#"{"volume-type":"block","device":"d","fstype":"ext4"}"#,
                "absolute",
            ),
            (
                r#"{"volume-type":"block","device":"/d","fstype":""}"#,
                "fstype",
            ),
            (
                r#"{"volume-type":"block","device":"/d","fstype":"ext4","options":"ro"}"#,
                "options",
            ),
        ] {
            let e = parse_mount_info(bad).unwrap_err().to_string();
            assert!(
                e.starts_with("--mount-info: ") && e.contains(says),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn add_find_record_and_remove() {
        let root = tempfile::tempdir().unwrap();
        let root = root.path().join("direct-volumes");
        let file = add(&root, "/vol/a", INFO).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), INFO);
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&file), 0o600);
        assert_eq!(mode(file.parent().unwrap()), 0o700);
        assert_eq!(
            mount_info(&root, "/vol/a").unwrap().unwrap().device,
            "/dev/sdb"
        );
        assert_eq!(sandbox_of(&root, "/vol/a").unwrap(), None);
        record_sandbox(&root, "/vol/a", "sb1").unwrap();
        assert_eq!(sandbox_of(&root, "/vol/a").unwrap().as_deref(), Some("sb1"));
        forget_sandbox(&root, "/vol/a", "sb1");
        assert_eq!(sandbox_of(&root, "/vol/a").unwrap(), None);

        // A bad record replaces nothing.
        assert!(add(&root, "/vol/a", "{}").is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), INFO);
        assert!(matches!(
            add(&root, "vol/a", INFO),
            Err(DirectVolumeError::BadVolumePath(_))
        ));

        remove(&root, "/vol/a").unwrap();
        assert!(!file.parent().unwrap().exists());
        let e = remove(&root, "/vol/a").unwrap_err();
        assert!(matches!(e, DirectVolumeError::NotAdded(_)), "{e}");
        assert!(e.to_string().contains("was never added"), "{e}");
        assert!(matches!(
            sandbox_of(&root, "/vol/b"),
            Err(DirectVolumeError::NotAdded(_))
        ));
        assert_eq!(mount_info(&root, "/vol/b").unwrap(), None);
    }
}
