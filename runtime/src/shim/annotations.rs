//! Which sandbox a container belongs to, from the annotations CRI runtimes
//! put in `config.json`: containerd's CRI (`io.kubernetes.cri.*`) and
//! CRI-O's (`io.kubernetes.cri-o.*`) spellings.
//!
//! The sandbox id read here names host directories (and the shim that
//! serves the sandbox), so it is validated with the same rule as every
//! other id ([`protocols::ids`]) before anything uses it.

use std::collections::HashMap;
use std::path::Path;

pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
pub const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";

/// The sandbox of a container: `Ok(None)` when it is its own sandbox (a
/// plain `ctr run` container or a CRI pod sandbox), `Ok(Some(sid))` when a
/// CRI "container" joins sandbox `sid`. Any sandbox id annotation present is
/// validated, whatever the container type; the two spellings must agree.
pub fn joined_sandbox(annotations: &HashMap<String, String>) -> Result<Option<String>, String> {
    let get = |k: &str| annotations.get(k).map(String::as_str);
    let kind = pick(
        get(CRI_CONTAINER_TYPE),
        get(CRIO_CONTAINER_TYPE),
        CRI_CONTAINER_TYPE,
        CRIO_CONTAINER_TYPE,
    )?;
    let sid = pick(
        get(CRI_SANDBOX_ID),
        get(CRIO_SANDBOX_ID),
        CRI_SANDBOX_ID,
        CRIO_SANDBOX_ID,
    )?;
    if let Some((key, id)) = sid {
        protocols::ids::check_id(&format!("annotation {key}"), id)?;
    }
    match (kind, sid) {
        (None, _) | (Some((_, "sandbox")), _) => Ok(None),
        (Some((_, "container")), Some((_, id))) => Ok(Some(id.to_string())),
        (Some((key, "container")), None) => Err(format!(
            "annotation {key} is \"container\" but no sandbox id annotation ({CRI_SANDBOX_ID} or {CRIO_SANDBOX_ID}) names its sandbox"
        )),
        (Some((key, other)), _) => Err(format!(
            "annotation {key} is {other:?}: it must be \"sandbox\" or \"container\""
        )),
    }
}

/// The value of one of two spellings, with the key it came from; both
/// present must agree.
fn pick<'a>(
    cri: Option<&'a str>,
    crio: Option<&'a str>,
    cri_key: &'static str,
    crio_key: &'static str,
) -> Result<Option<(&'static str, &'a str)>, String> {
    match (cri, crio) {
        (Some(a), Some(b)) if a != b => Err(format!(
            "annotations {cri_key} ({a:?}) and {crio_key} ({b:?}) disagree"
        )),
        (Some(a), _) => Ok(Some((cri_key, a))),
        (None, Some(b)) => Ok(Some((crio_key, b))),
        (None, None) => Ok(None),
    }
}

/// The sandbox a bundle's container runs in: the joined sandbox's id, else
/// the container's own id. A bundle without a readable `config.json` (the
/// `delete` action may run after containerd removed it) belongs to its own
/// sandbox. `container_id` must already be valid.
pub fn sandbox_id_of_bundle(bundle: &Path, container_id: &str) -> Result<String, String> {
    let path = bundle.join("config.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(container_id.to_string());
    };
    let spec: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let annotations: HashMap<String, String> = match spec.get("annotations") {
        None | Some(serde_json::Value::Null) => HashMap::new(),
        Some(v) => serde_json::from_value(v.clone())
            .map_err(|e| format!("{}: annotations: {e}", path.display()))?,
    };
    Ok(joined_sandbox(&annotations)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .unwrap_or_else(|| container_id.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ann(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn both_spellings_name_the_sandbox() {
        assert_eq!(joined_sandbox(&ann(&[])).unwrap(), None);
        for (t, s) in [
            (CRI_CONTAINER_TYPE, CRI_SANDBOX_ID),
            (CRIO_CONTAINER_TYPE, CRIO_SANDBOX_ID),
        ] {
            assert_eq!(
                joined_sandbox(&ann(&[(t, "container"), (s, "pod1")])).unwrap(),
                Some("pod1".into())
            );
            assert_eq!(
                joined_sandbox(&ann(&[(t, "sandbox"), (s, "pod1")])).unwrap(),
                None
            );
        }
    }

    #[test]
    fn hostile_sandbox_ids_are_refused_whatever_the_type() {
        for bad in ["../../../var/lib", "/var/lib", "..", ".", "", "a/b", ".x"] {
            for t in ["container", "sandbox"] {
                for (tk, sk) in [
                    (CRI_CONTAINER_TYPE, CRI_SANDBOX_ID),
                    (CRIO_CONTAINER_TYPE, CRIO_SANDBOX_ID),
                ] {
                    let e = joined_sandbox(&ann(&[(tk, t), (sk, bad)])).unwrap_err();
                    assert!(
                        e.contains(sk) && e.contains("is invalid"),
                        "{bad:?} {t}: {e}"
                    );
                }
            }
        }
    }

    #[test]
    fn inconsistent_annotations_are_errors() {
        let e = joined_sandbox(&ann(&[(CRI_CONTAINER_TYPE, "container")])).unwrap_err();
        assert!(e.contains("no sandbox id"), "{e}");
        let e = joined_sandbox(&ann(&[(CRI_CONTAINER_TYPE, "podman")])).unwrap_err();
        assert!(e.contains("must be"), "{e}");
        let e = joined_sandbox(&ann(&[
            (CRI_CONTAINER_TYPE, "container"),
            (CRI_SANDBOX_ID, "a"),
            (CRIO_SANDBOX_ID, "b"),
        ]))
        .unwrap_err();
        assert!(e.contains("disagree"), "{e}");
    }

    #[test]
    fn bundles() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(sandbox_id_of_bundle(dir.path(), "c1").unwrap(), "c1");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations": {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "pod1"}}"#,
        )
        .unwrap();
        assert_eq!(sandbox_id_of_bundle(dir.path(), "c1").unwrap(), "pod1");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations": {"io.kubernetes.cri.container-type": "sandbox", "io.kubernetes.cri.sandbox-id": "pod1"}}"#,
        )
        .unwrap();
        assert_eq!(sandbox_id_of_bundle(dir.path(), "pod1").unwrap(), "pod1");
        std::fs::write(
            dir.path().join("config.json"),
            r#"{"annotations": {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "../../victim"}}"#,
        )
        .unwrap();
        let e = sandbox_id_of_bundle(dir.path(), "c1").unwrap_err();
        assert!(e.contains("config.json") && e.contains("is invalid"), "{e}");
        std::fs::write(dir.path().join("config.json"), "{not json").unwrap();
        assert!(sandbox_id_of_bundle(dir.path(), "c1")
            .unwrap_err()
            .contains("config.json"));
    }
}
