//! SPDX 2.3 JSON SBOM: every pinned input (kernel source, busybox, Debian
//! packages...), every crate of `Cargo.lock` and of the lock files of
//! helpers built from their own crate (contained by that helper's pin), with versions, download
//! locations and SHA-256 checksums (cargo's `checksum` is the sha256 of the
//! `.crate` file). Deterministic: `created` is the release epoch and the
//! document namespace is derived from the version and the content's hash.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::util::{rfc3339, write_atomically};

/// One pinned input of the build, from `versions.yaml`.
#[derive(Clone, Debug)]
pub struct Pin {
    pub name: String,
    pub version: String,
    /// Where it is fetched from (URL), or a description such as the Debian package.
    pub download_location: String,
    /// sha256 of exactly what is fetched (64 hex digits).
    pub sha256: String,
    /// Package URL, e.g. `pkg:deb/debian/busybox-static@1:1.35.0-4?arch=amd64`.
    pub purl: Option<String>,
}

/// What the SBOM describes.
#[derive(Clone, Debug)]
pub struct SbomInputs<'a> {
    /// The release's package name, e.g. `kata-static`.
    pub name: String,
    pub version: String,
    pub pins: Vec<Pin>,
    pub cargo_lock: &'a Path,
    /// Lock files of shipped helpers built from their own crate with
    /// `cargo install --locked`: the crates they pin are compiled into the
    /// binary the named pin describes, so they are listed too.
    pub helper_locks: Vec<HelperLock<'a>>,
}

/// One helper's Cargo.lock and the name of the pin (in `pins`) it belongs to.
#[derive(Clone, Debug)]
pub struct HelperLock<'a> {
    pub pin: String,
    pub cargo_lock: &'a Path,
}

#[derive(Deserialize)]
struct CargoLock {
    #[serde(default)]
    package: Vec<LockedPackage>,
}

#[derive(Deserialize)]
struct LockedPackage {
    name: String,
    version: String,
    source: Option<String>,
    checksum: Option<String>,
}

const CRATES_IO: &str = "registry+https://github.com/rust-lang/crates.io-index";

/// Writes the SBOM to `out` (temp file, renamed into place).
pub fn write_spdx_sbom(inputs: &SbomInputs<'_>, out: &Path, epoch: u64) -> Result<()> {
    let doc = spdx_document(inputs, epoch)?;
    let mut bytes = serde_json::to_vec_pretty(&doc)?;
    bytes.push(b'\n');
    write_atomically(out, |w| Ok(w.write_all(&bytes)?), |_| Ok(()))
        .with_context(|| format!("cannot write SBOM {}", out.display()))
}

fn read_lock(path: &Path) -> Result<CargoLock> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: not a Cargo.lock", path.display()))
}

fn spdx_document(inputs: &SbomInputs<'_>, epoch: u64) -> Result<Value> {
    let lock = read_lock(inputs.cargo_lock)?;

    let mut ids = SpdxIds::default();
    let root_id = ids.make("Release", &inputs.name, &inputs.version);
    let mut packages = vec![json!({
        "SPDXID": root_id,
        "name": inputs.name,
        "versionInfo": inputs.version,
        "downloadLocation": "NOASSERTION",
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "APPLICATION",
    })];
    let mut relationships = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": root_id,
    })];
    let mut contains = |whole: &str, part: &str| {
        relationships.push(json!({
            "spdxElementId": whole,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": part,
        }))
    };
    let mut pin_ids = BTreeMap::new();

    for pin in &inputs.pins {
        if pin.sha256.len() != 64 || !pin.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            bail!(
                "SBOM pin {}: sha256 {:?} is not 64 hex digits (pin it in versions.yaml)",
                pin.name,
                pin.sha256
            );
        }
        let id = ids.make("Pin", &pin.name, &pin.version);
        let mut p = json!({
            "SPDXID": id,
            "name": pin.name,
            "versionInfo": pin.version,
            "downloadLocation": pin.download_location,
            "filesAnalyzed": false,
            "checksums": [{"algorithm": "SHA256", "checksumValue": pin.sha256.to_ascii_lowercase()}],
            "licenseConcluded": "NOASSERTION",
            "licenseDeclared": "NOASSERTION",
            "copyrightText": "NOASSERTION",
        });
        if let Some(purl) = &pin.purl {
            p["externalRefs"] = json!([{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": purl,
            }]);
        }
        packages.push(p);
        contains(&root_id, &id);
        pin_ids.insert(pin.name.clone(), id);
    }

    let mut crate_ids = BTreeMap::new();
    for krate in &lock.package {
        let id = ids.make("Crate", &krate.name, &krate.version);
        packages.push(crate_package(krate, &id, inputs.cargo_lock)?);
        contains(&root_id, &id);
        crate_ids.insert((krate.name.clone(), krate.version.clone()), id);
    }

    for helper in &inputs.helper_locks {
        let Some(pin_id) = pin_ids.get(&helper.pin) else {
            bail!(
                "{}: lock file of {:?}, which is not one of the SBOM's pins",
                helper.cargo_lock.display(),
                helper.pin
            );
        };
        for krate in read_lock(helper.cargo_lock)?.package {
            // The helper's own package: the pin already describes it.
            if krate.source.is_none() {
                continue;
            }
            let key = (krate.name.clone(), krate.version.clone());
            let id = match crate_ids.get(&key) {
                Some(id) => id.clone(),
                None => {
                    let id = ids.make("Crate", &krate.name, &krate.version);
                    packages.push(crate_package(&krate, &id, helper.cargo_lock)?);
                    crate_ids.insert(key, id.clone());
                    id
                }
            };
            contains(pin_id, &id);
        }
    }

    let mut doc = json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": format!("{}-{}", inputs.name, inputs.version),
        "creationInfo": {
            "created": rfc3339(epoch),
            "creators": [format!("Tool: kata-packaging-{}", env!("CARGO_PKG_VERSION"))],
        },
        "packages": packages,
        "relationships": relationships,
    });
    // The namespace names this exact content: same inputs, same namespace.
    let content_hash = hex::encode(Sha256::digest(serde_json::to_vec(&doc)?));
    doc["documentNamespace"] = json!(format!(
        "https://katacontainers.io/spdx/{}-{}-{}",
        inputs.name,
        inputs.version,
        &content_hash[..32]
    ));
    Ok(doc)
}

/// One crate of a Cargo.lock as an SPDX package: crates.io ones with their
/// `.crate` checksum, download URL and purl; git ones with their source.
fn crate_package(krate: &LockedPackage, id: &str, lock_path: &Path) -> Result<Value> {
    let mut p = json!({
        "SPDXID": id,
        "name": krate.name,
        "versionInfo": krate.version,
        "filesAnalyzed": false,
        "licenseConcluded": "NOASSERTION",
        "licenseDeclared": "NOASSERTION",
        "copyrightText": "NOASSERTION",
        "primaryPackagePurpose": "LIBRARY",
    });
    match krate.source.as_deref() {
        Some(CRATES_IO) | Some("sparse+https://index.crates.io/") => {
            let Some(sum) = &krate.checksum else {
                bail!("{}: crate {} {} has no checksum; regenerate the lock file with cargo", lock_path.display(), krate.name, krate.version);
            };
            p["downloadLocation"] =
                json!(format!("https://crates.io/api/v1/crates/{}/{}/download", krate.name, krate.version));
            p["checksums"] = json!([{"algorithm": "SHA256", "checksumValue": sum}]);
            p["externalRefs"] = json!([{
                "referenceCategory": "PACKAGE-MANAGER",
                "referenceType": "purl",
                "referenceLocator": format!("pkg:cargo/{}@{}", krate.name, krate.version),
            }]);
        }
        Some(other) if other.starts_with("git+") => {
            p["downloadLocation"] = json!(other);
        }
        Some(other) => bail!(
            "{}: crate {} {} comes from {other}, which the SBOM cannot describe (only crates.io, git and workspace crates)",
            lock_path.display(),
            krate.name,
            krate.version
        ),
        // Workspace members: built from this repository.
        None => p["downloadLocation"] = json!("NOASSERTION"),
    }
    Ok(p)
}

/// SPDX identifiers are `SPDXRef-[A-Za-z0-9.-]+` and unique in a document.
#[derive(Default)]
struct SpdxIds {
    used: BTreeSet<String>,
}

impl SpdxIds {
    fn make(&mut self, kind: &str, name: &str, version: &str) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                        c
                    } else {
                        '-'
                    }
                })
                .collect()
        };
        let base = format!("SPDXRef-{kind}-{}-{}", clean(name), clean(version));
        let mut id = base.clone();
        let mut n = 2;
        while !self.used.insert(id.clone()) {
            id = format!("{base}-{n}");
            n += 1;
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = "version = 3\n\n\
[[package]]\nname = \"ours\"\nversion = \"0.1.0\"\n\n\
[[package]]\nname = \"shared\"\nversion = \"1.0.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"1111111111111111111111111111111111111111111111111111111111111111\"\n";
    const HELPER_LOCK: &str = "version = 3\n\n\
[[package]]\nname = \"helper\"\nversion = \"0.3.0\"\n\n\
[[package]]\nname = \"shared\"\nversion = \"1.0.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"1111111111111111111111111111111111111111111111111111111111111111\"\n\n\
[[package]]\nname = \"only-in-helper\"\nversion = \"0.2.11\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\nchecksum = \"2222222222222222222222222222222222222222222222222222222222222222\"\n";

    fn helper_pin() -> Pin {
        Pin {
            name: "helper".into(),
            version: "0.3.0".into(),
            download_location: "https://crates.io/api/v1/crates/helper/0.3.0/download".into(),
            sha256: "3".repeat(64),
            purl: Some("pkg:cargo/helper@0.3.0".into()),
        }
    }

    fn contained_by<'d>(doc: &'d Value, whole: &str) -> Vec<&'d str> {
        doc["relationships"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["relationshipType"] == "CONTAINS" && r["spdxElementId"] == whole)
            .map(|r| r["relatedSpdxElement"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn helper_lock_crates_are_listed_once_and_contained_by_the_helper_pin() {
        let dir = tempfile::tempdir().unwrap();
        let (lock, helper_lock) = (
            dir.path().join("Cargo.lock"),
            dir.path().join("helper.lock"),
        );
        std::fs::write(&lock, LOCK).unwrap();
        std::fs::write(&helper_lock, HELPER_LOCK).unwrap();
        let inputs = SbomInputs {
            name: "kata-static".into(),
            version: "1.0.0".into(),
            pins: vec![helper_pin()],
            cargo_lock: &lock,
            helper_locks: vec![HelperLock {
                pin: "helper".into(),
                cargo_lock: &helper_lock,
            }],
        };
        let doc = spdx_document(&inputs, 0).unwrap();
        let packages = doc["packages"].as_array().unwrap();
        let named = |n: &str| {
            packages
                .iter()
                .filter(|p| p["name"] == n)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            named("shared").len(),
            1,
            "a crate in both locks is listed once"
        );
        assert_eq!(
            named("helper").len(),
            1,
            "the helper itself is its pin, not a crate too"
        );
        let only = named("only-in-helper");
        assert_eq!(only.len(), 1);
        assert_eq!(only[0]["checksums"][0]["checksumValue"], "2".repeat(64));
        assert_eq!(
            only[0]["externalRefs"][0]["referenceLocator"],
            "pkg:cargo/only-in-helper@0.2.11"
        );
        let pin_id = named("helper")[0]["SPDXID"].as_str().unwrap();
        let in_helper = contained_by(&doc, pin_id);
        for n in ["shared", "only-in-helper"] {
            let id = named(n)[0]["SPDXID"].as_str().unwrap();
            assert!(
                in_helper.contains(&id),
                "{n} must be contained by the helper's pin"
            );
        }
    }

    #[test]
    fn a_helper_lock_without_its_pin_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join("Cargo.lock");
        std::fs::write(&lock, LOCK).unwrap();
        let inputs = SbomInputs {
            name: "kata-static".into(),
            version: "1.0.0".into(),
            pins: vec![],
            cargo_lock: &lock,
            helper_locks: vec![HelperLock {
                pin: "helper".into(),
                cargo_lock: &lock,
            }],
        };
        let err = format!("{:#}", spdx_document(&inputs, 0).unwrap_err());
        assert!(
            err.contains("\"helper\"") && err.contains("not one of the SBOM's pins"),
            "{err}"
        );
    }
}
