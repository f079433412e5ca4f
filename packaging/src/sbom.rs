//! SPDX 2.3 JSON SBOM: every pinned input (kernel source, busybox, Debian
//! packages...) and every crate of `Cargo.lock`, with versions, download
//! locations and SHA-256 checksums (cargo's `checksum` is the sha256 of the
//! `.crate` file). Deterministic: `created` is the release epoch and the
//! document namespace is derived from the version and the content's hash.

use std::collections::BTreeSet;
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

fn spdx_document(inputs: &SbomInputs<'_>, epoch: u64) -> Result<Value> {
    let lock_text = std::fs::read_to_string(inputs.cargo_lock)
        .with_context(|| format!("cannot read {}", inputs.cargo_lock.display()))?;
    let lock: CargoLock = toml::from_str(&lock_text)
        .with_context(|| format!("{}: not a Cargo.lock", inputs.cargo_lock.display()))?;

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
    let mut contains = |id: &str| {
        relationships.push(json!({
            "spdxElementId": root_id,
            "relationshipType": "CONTAINS",
            "relatedSpdxElement": id,
        }))
    };

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
        contains(&id);
    }

    for krate in &lock.package {
        let id = ids.make("Crate", &krate.name, &krate.version);
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
                    bail!("{}: crate {} {} has no checksum; regenerate the lock file with cargo", inputs.cargo_lock.display(), krate.name, krate.version);
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
                inputs.cargo_lock.display(),
                krate.name,
                krate.version
            ),
            // Workspace members: built from this repository.
            None => p["downloadLocation"] = json!("NOASSERTION"),
        }
        packages.push(p);
        contains(&id);
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
