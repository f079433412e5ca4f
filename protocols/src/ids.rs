//! The one rule for container, exec and sandbox ids, applied by both the
//! shim (host) and the agent (guest).
//!
//! Ids become path components on both sides (state directories, bundle
//! directories, the directory virtiofsd shares) and the host side deletes
//! what it created under them, so an id must never be able to name a
//! parent, an absolute path or a hidden entry. The rule is containerd's
//! identifier alphabet, anchored on an alphanumeric first character, and
//! one-character ids are valid, as they are for runc. The length bound
//! keeps `<state_root>/<id>/<socket>` within a unix socket path.

/// Longest id accepted.
pub const MAX_ID_LEN: usize = 64;

/// The rule, as error messages state it.
pub const ID_RULE: &str = "1-64 characters of [A-Za-z0-9_.-], starting with a letter or digit";

/// Whether `id` may be used as a container, exec or sandbox id.
pub fn valid_id(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_ID_LEN
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// `Ok` for a valid id, else the one-line reason naming `what` (e.g.
/// "container id", "annotation io.kubernetes.cri.sandbox-id").
pub fn check_id(what: &str, id: &str) -> Result<(), String> {
    if valid_id(id) {
        Ok(())
    } else {
        Err(format!("{what} {id:?} is invalid: an id is {ID_RULE}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_what_runc_accepts() {
        for id in [
            "a",
            "7",
            "c1",
            "0123abc_-.",
            "pod.sandbox-1_x",
            &"a".repeat(64),
        ] {
            assert!(valid_id(id), "{id:?}");
        }
    }

    #[test]
    fn refuses_anything_that_could_leave_a_directory() {
        for id in [
            "",
            ".",
            "..",
            ".hidden",
            "-flag",
            "_x",
            "a/b",
            "../../../var/lib",
            "/var/lib",
            "a\0b",
            "a b",
            "é",
            &"a".repeat(65),
        ] {
            assert!(!valid_id(id), "{id:?}");
        }
    }

    #[test]
    fn the_error_names_the_field_and_the_rule() {
        let e = check_id("annotation io.kubernetes.cri.sandbox-id", "../x").unwrap_err();
        assert!(
            e.starts_with("annotation io.kubernetes.cri.sandbox-id \"../x\" is invalid"),
            "{e}"
        );
        assert!(e.contains(ID_RULE), "{e}");
    }
}
