//! Renders `configuration.toml` from its tera template for an install prefix.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

/// Renders `template` with `prefix` (absolute, e.g. `/opt/kata`) and `extra`
/// variables. Undefined variables are errors (tera is strict), and the result
/// must parse as TOML: a template typo never reaches a release.
pub fn render_configuration(
    template: &str,
    prefix: &str,
    extra: &BTreeMap<String, String>,
) -> Result<String> {
    if !prefix.starts_with('/') {
        bail!("install prefix {prefix:?} must be absolute (e.g. /opt/kata)");
    }
    let mut context = tera::Context::new();
    for (k, v) in extra {
        if k == "prefix" {
            bail!(
                "extra template variable `prefix` is reserved: pass the install prefix as `prefix`"
            );
        }
        context.insert(k, v);
    }
    context.insert("prefix", prefix.trim_end_matches('/'));
    let rendered = tera::Tera::one_off(template, &context, false).map_err(|e| {
        // tera's Display is only the outer message; the cause says which variable.
        let mut msg = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            source = s.source();
        }
        anyhow::anyhow!("configuration template: {msg}")
    })?;
    toml::from_str::<toml::Value>(&rendered)
        .context("rendered configuration.toml is not valid TOML (fix the template)")?;
    Ok(rendered)
}
