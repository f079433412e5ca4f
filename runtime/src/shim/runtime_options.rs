//! containerd's runtime options for a shim other than runc's
//! (`runtimeoptions.v1.Options`): what the CRI plugin sends in
//! `CreateTaskRequest.options` from a handler's `[...runtimes.NAME.options]`
//! table. Upstream's shim takes the configuration file from its
//! `ConfigPath` ahead of `KATA_CONF_FILE`, so one containerd can run
//! several handlers (one per guest flavour) with one shim binary; the
//! shipped containerd snippet sets it.
//!
//! The message (containerd `pkg/runtimeoptions/v1/api.proto`) has
//! `type_url = 1` and `config_path = 2`; it is read with the protobuf
//! crate's stream reader rather than generated code for two strings.

use std::path::PathBuf;

use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::CodedInputStream;

/// The message's name as containerd's typeurl writes it (with or without
/// a `type.googleapis.com/` style prefix, and with or without the `cri.`
/// package prefix older CRI trees used).
const OPTIONS_TYPE_SUFFIX: &str = "runtimeoptions.v1.Options";
const CONFIG_PATH_FIELD: u32 = 2;

/// The `ConfigPath` of `options`, when they are runtime options naming one.
/// Options of another type (e.g. runc's, from a misconfigured handler) are
/// not ours to read: `None`.
pub fn config_path(options: Option<&Any>) -> Result<Option<PathBuf>, String> {
    let Some(any) = options else {
        return Ok(None);
    };
    if !any.type_url.ends_with(OPTIONS_TYPE_SUFFIX) {
        return Ok(None);
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    let mut path = None;
    let bad = |e: containerd_shim::protos::protobuf::Error| {
        format!("containerd runtime options ({}): {e}", any.type_url)
    };
    while let Some(tag) = input.read_raw_tag_or_eof().map_err(bad)? {
        let (field, wire_type) = (tag >> 3, tag & 7);
        if field == CONFIG_PATH_FIELD && wire_type == 2 {
            path = Some(input.read_string().map_err(bad)?);
        } else {
            input
                .skip_field(
                    containerd_shim::protos::protobuf::rt::WireType::new(wire_type)
                        .ok_or_else(|| format!("containerd runtime options ({}): wire type {wire_type} of field {field} is invalid", any.type_url))?,
                )
                .map_err(bad)?;
        }
    }
    Ok(path.filter(|p| !p.is_empty()).map(PathBuf::from))
}

#[cfg(test)]
mod tests {
    use containerd_shim::protos::protobuf::CodedOutputStream;

    use super::*;

    fn options(type_url: &str, fields: &[(u32, &str)]) -> Any {
        let mut value = Vec::new();
        {
            let mut out = CodedOutputStream::vec(&mut value);
            for (n, s) in fields {
                out.write_string(*n, s).unwrap();
            }
            out.flush().unwrap();
        }
        let mut any = Any::new();
        any.type_url = type_url.into();
        any.value = value;
        any
    }

    #[test]
    fn config_path_is_read_from_runtime_options() {
        let o = options(
            "runtimeoptions.v1.Options",
            &[(1, "io.containerd.kata.v2"), (2, "/etc/kata/debian.toml")],
        );
        assert_eq!(
            config_path(Some(&o)).unwrap(),
            Some(PathBuf::from("/etc/kata/debian.toml"))
        );
        let o = options(
            "type.googleapis.com/cri.runtimeoptions.v1.Options",
            &[(2, "/c.toml")],
        );
        assert_eq!(
            config_path(Some(&o)).unwrap(),
            Some(PathBuf::from("/c.toml"))
        );
    }

    #[test]
    fn no_options_other_options_or_an_empty_path_name_nothing() {
        assert_eq!(config_path(None).unwrap(), None);
        let o = options("containerd.runc.v1.Options", &[(2, "/not/ours")]);
        assert_eq!(config_path(Some(&o)).unwrap(), None);
        let o = options("runtimeoptions.v1.Options", &[(1, "x")]);
        assert_eq!(config_path(Some(&o)).unwrap(), None);
        let o = options("runtimeoptions.v1.Options", &[(2, "")]);
        assert_eq!(config_path(Some(&o)).unwrap(), None);
    }

    #[test]
    fn truncated_options_are_an_error_naming_them() {
        let mut o = options("runtimeoptions.v1.Options", &[(2, "/etc/kata/x.toml")]);
        o.value.truncate(5);
        let e = config_path(Some(&o)).unwrap_err();
        assert!(
            e.contains("runtime options (runtimeoptions.v1.Options)"),
            "{e}"
        );
    }
}
