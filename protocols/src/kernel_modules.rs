//! The one rule for CreateSandbox's `kernel_modules`, applied by the
//! runtime when it reads `[agent.kata] kernel_modules` and by the agent
//! before it loads anything.
//!
//! A configuration entry is upstream's string form, `"NAME KEY=VALUE ..."`:
//! the module name, then its parameters, separated by spaces. The agent
//! joins the parameters with spaces for the kernel, so a parameter can hold
//! no whitespace.

/// The rule, as error messages state it.
pub const RULE: &str = "a module name of 1-55 characters of [A-Za-z0-9_-], then parameters KEY or KEY=VALUE (KEY of [A-Za-z0-9_.-], no whitespace)";

/// `Ok` when `name` and `parameters` follow [`RULE`], else why not.
pub fn check(name: &str, parameters: &[String]) -> Result<(), String> {
    let name_ok = !name.is_empty()
        // The kernel's MODULE_NAME_LEN (56) counts the terminating NUL.
        && name.len() <= 55
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(format!("module name {name:?} is invalid: {RULE}"));
    }
    for p in parameters {
        let key = p.split('=').next().unwrap_or_default();
        let ok = !key.is_empty()
            && !p.chars().any(|c| c.is_whitespace() || c == '\0')
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(format!("module {name}: parameter {p:?} is invalid: {RULE}"));
        }
    }
    Ok(())
}

/// Splits a configuration entry into name and parameters, checked.
pub fn parse_entry(entry: &str) -> Result<(String, Vec<String>), String> {
    let mut words = entry.split_whitespace();
    let Some(name) = words.next() else {
        return Err(format!("entry {entry:?} is empty: {RULE}"));
    };
    let parameters: Vec<String> = words.map(str::to_string).collect();
    check(name, &parameters)?;
    Ok((name.to_string(), parameters))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_split_into_name_and_parameters() {
        assert_eq!(
            parse_entry("  bonding max_bonds=2  miimon=100 ").unwrap(),
            (
                "bonding".into(),
                vec!["max_bonds=2".into(), "miimon=100".into()]
            )
        );
        assert_eq!(parse_entry("dummy").unwrap(), ("dummy".into(), vec![]));
        assert_eq!(
            parse_entry("nf-tables debug").unwrap(),
            ("nf-tables".into(), vec!["debug".into()])
        );
    }

    #[test]
    fn bad_names_and_parameters_are_refused_with_the_rule() {
        for bad in ["", "   ", "../x", "a/b", "x p=a\0b", "x =v", "x k!=v"] {
            let e = parse_entry(bad).unwrap_err();
            assert!(e.contains(RULE), "{bad:?}: {e}");
        }
        assert!(check("x", &["a b".into()]).is_err());
        assert!(check(&"m".repeat(56), &[]).is_err());
        assert!(check(&"m".repeat(55), &["k=v=w".into()]).is_ok());
    }
}
