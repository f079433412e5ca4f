//! Kernel config fragments: parsing, merging and provenance.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// One option value as written in a fragment or a `.config`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigValue {
    Yes,
    Module,
    /// `CONFIG_X=n` or `# CONFIG_X is not set`.
    No,
    /// A quoted string, unescaped.
    Str(String),
    /// A decimal or `0x` hex number, kept as written (Kconfig does too).
    Number(String),
}

impl ConfigValue {
    /// Parses the right-hand side of `CONFIG_X=<value>`; `None` names nothing
    /// useful, so the caller turns it into a located error.
    pub fn parse(text: &str) -> std::result::Result<ConfigValue, String> {
        match text {
            "y" => return Ok(ConfigValue::Yes),
            "m" => return Ok(ConfigValue::Module),
            "n" => return Ok(ConfigValue::No),
            "" => return Err("missing value after `=` (use y, m, n, \"text\" or a number)".into()),
            _ => {}
        }
        if let Some(rest) = text.strip_prefix('"') {
            return parse_quoted(rest).map(ConfigValue::Str);
        }
        let digits = text.strip_prefix('-').unwrap_or(text);
        let is_number =
            if let Some(hex) = text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
                !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit())
            } else {
                !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit())
            };
        if is_number {
            Ok(ConfigValue::Number(text.to_string()))
        } else {
            Err(format!(
                "value `{text}` is not y, m, n, a \"quoted string\" or a number"
            ))
        }
    }

    /// The value as it appears after `=` in a `.config`.
    pub fn to_config_text(&self) -> String {
        match self {
            ConfigValue::Yes => "y".into(),
            ConfigValue::Module => "m".into(),
            ConfigValue::No => "n".into(),
            ConfigValue::Str(s) => {
                let mut out = String::from("\"");
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
                out
            }
            ConfigValue::Number(n) => n.clone(),
        }
    }
}

impl fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_config_text())
    }
}

/// `rest` is everything after the opening quote.
fn parse_quoted(rest: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(e) => out.push(e),
                None => return Err("string ends with a lone backslash".into()),
            },
            '"' => {
                let tail: String = chars.collect();
                if tail.trim().is_empty() {
                    return Ok(out);
                }
                return Err(format!(
                    "unexpected text `{}` after the closing quote",
                    tail.trim()
                ));
            }
            c => out.push(c),
        }
    }
    Err("string is missing its closing quote".into())
}

/// Where a request or whitelist entry was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Path relative to the configs directory, `/`-separated.
    pub file: String,
    /// 1-based.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One option a fragment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Full name including the `CONFIG_` prefix.
    pub name: String,
    pub value: ConfigValue,
    pub origin: Origin,
}

/// A line of a fragment or `.config`, classified.
pub(crate) enum Line {
    Blank,
    Setting(String, ConfigValue),
}

/// Parses one line of Kconfig syntax. Comments other than `# CONFIG_X is not
/// set` are blank lines.
pub(crate) fn parse_line(raw: &str) -> std::result::Result<Line, String> {
    let line = raw.trim();
    if line.is_empty() {
        return Ok(Line::Blank);
    }
    if let Some(comment) = line.strip_prefix('#') {
        let comment = comment.trim();
        if let Some(name) = comment.strip_suffix(" is not set") {
            let name = name.trim();
            if name.starts_with("CONFIG_") {
                check_name(name)?;
                return Ok(Line::Setting(name.to_string(), ConfigValue::No));
            }
        }
        return Ok(Line::Blank);
    }
    let Some((name, value)) = line.split_once('=') else {
        return Err(format!(
            "expected `CONFIG_NAME=value` or `# CONFIG_NAME is not set`, found `{line}`"
        ));
    };
    if name.ends_with(char::is_whitespace) || value.starts_with(char::is_whitespace) {
        return Err(format!(
            "no spaces around `=` in `{line}` (Kconfig would not read it)"
        ));
    }
    check_name(name)?;
    let value = ConfigValue::parse(value)?;
    Ok(Line::Setting(name.to_string(), value))
}

fn check_name(name: &str) -> std::result::Result<(), String> {
    let Some(rest) = name.strip_prefix("CONFIG_") else {
        return Err(format!("option name `{name}` must start with CONFIG_"));
    };
    if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "option name `{name}` may only contain letters, digits and `_` after CONFIG_"
        ));
    }
    Ok(())
}

/// The fragments for one architecture (and optionally the debug set), merged,
/// with the whitelist.
#[derive(Debug, Clone)]
pub struct Fragments {
    configs_dir: PathBuf,
    arch: String,
    debug: bool,
    /// Fragment files in merge order, then the whitelist if present.
    files: Vec<(String, PathBuf)>,
    /// Requests in the order they were first written.
    requests: Vec<Request>,
    whitelist: BTreeMap<String, Origin>,
}

/// The module flavour's fragment directory (see [`Fragments::load_flavour`]).
pub const MODULES_GROUP: &str = "modules";

/// Name of the whitelist file at the top of the configs directory.
pub const WHITELIST_FILE: &str = "whitelist.conf";

impl Fragments {
    /// Reads `common/*.conf`, `<arch>/*.conf` and, when `debug`, `debug/*.conf`
    /// (each directory in byte order of file names, sub-directories ignored),
    /// plus `whitelist.conf` when it exists.
    pub fn load(configs_dir: &Path, arch: &str, debug: bool) -> Result<Fragments> {
        Self::load_flavour(configs_dir, arch, debug, false)
    }

    /// [`Fragments::load`], and with `modules` the module flavour's
    /// `modules/*.conf` last. That directory turns module loading on, so it
    /// may give an option another value than `common/` or `<arch>/` did
    /// (`CONFIG_MODULES` itself, a driver `=m` instead of `=y`); its own
    /// files still may not disagree with each other.
    pub fn load_flavour(
        configs_dir: &Path,
        arch: &str,
        debug: bool,
        modules: bool,
    ) -> Result<Fragments> {
        if arch.is_empty() || arch.contains(['/', '\\']) || arch.starts_with('.') {
            return Err(Error::Input {
                path: configs_dir.to_path_buf(),
                problem: format!("`{arch}` is not an architecture name"),
            });
        }
        let mut groups = vec!["common", arch];
        if debug {
            groups.push("debug");
        }
        if modules {
            groups.push(MODULES_GROUP);
        }
        let mut fragments = Fragments {
            configs_dir: configs_dir.to_path_buf(),
            arch: arch.to_string(),
            debug,
            files: Vec::new(),
            requests: Vec::new(),
            whitelist: BTreeMap::new(),
        };
        let mut index: BTreeMap<String, usize> = BTreeMap::new();
        // What `modules/` asked for, and where: its files must agree.
        let mut from_modules: BTreeMap<String, (ConfigValue, Origin)> = BTreeMap::new();
        for group in groups {
            for (rel, path) in list_conf_files(configs_dir, group)? {
                let text = read_text(&path)?;
                for (n, raw) in text.lines().enumerate() {
                    let origin = Origin {
                        file: rel.clone(),
                        line: n + 1,
                    };
                    let line = parse_line(raw).map_err(|problem| Error::Syntax {
                        file: rel.clone(),
                        line: n + 1,
                        problem,
                    })?;
                    let Line::Setting(name, value) = line else {
                        continue;
                    };
                    if group == MODULES_GROUP {
                        // Checked against the flavour's own earlier lines,
                        // whichever place the merged request keeps.
                        if let Some((first_value, first)) = from_modules.get(&name) {
                            if *first_value != value {
                                return Err(Error::Conflict {
                                    name,
                                    first_value: first_value.to_string(),
                                    first: first.to_string(),
                                    second_value: value.to_string(),
                                    second: origin.to_string(),
                                });
                            }
                            continue;
                        }
                        from_modules.insert(name.clone(), (value.clone(), origin.clone()));
                        if let Some(&i) = index.get(&name) {
                            if fragments.requests[i].value != value {
                                fragments.requests[i] = Request {
                                    name,
                                    value,
                                    origin,
                                };
                            }
                            continue;
                        }
                    }
                    if let Some(&i) = index.get(&name) {
                        let first = &fragments.requests[i];
                        if first.value != value {
                            return Err(Error::Conflict {
                                name,
                                first_value: first.value.to_string(),
                                first: first.origin.to_string(),
                                second_value: value.to_string(),
                                second: origin.to_string(),
                            });
                        }
                        // Same value twice is harmless; the first place keeps it.
                        continue;
                    }
                    index.insert(name.clone(), fragments.requests.len());
                    fragments.requests.push(Request {
                        name,
                        value,
                        origin,
                    });
                }
                fragments.files.push((rel, path));
            }
        }
        let whitelist_path = configs_dir.join(WHITELIST_FILE);
        if whitelist_path.exists() {
            fragments.whitelist = parse_whitelist(&whitelist_path)?;
            fragments
                .files
                .push((WHITELIST_FILE.to_string(), whitelist_path));
        }
        Ok(fragments)
    }

    pub fn configs_dir(&self) -> &Path {
        &self.configs_dir
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    pub fn debug(&self) -> bool {
        self.debug
    }

    /// Every option asked for, in merge order, each once.
    pub fn requests(&self) -> &[Request] {
        &self.requests
    }

    pub fn request(&self, name: &str) -> Option<&Request> {
        self.requests.iter().find(|r| r.name == name)
    }

    /// Whitelisted option names and where they are listed.
    pub fn whitelist(&self) -> &BTreeMap<String, Origin> {
        &self.whitelist
    }

    pub fn is_whitelisted(&self, name: &str) -> bool {
        self.whitelist.contains_key(name)
    }

    /// The files this configuration is made of (relative path, absolute
    /// path), in merge order, whitelist last: what a cache key must hash.
    pub fn input_files(&self) -> Vec<(String, PathBuf)> {
        self.files.clone()
    }

    /// The merged fragment in `.config` syntax, as fed to
    /// `KCONFIG_ALLCONFIG`. Each line records where it came from.
    pub fn merged(&self) -> String {
        let mut out = String::from("# Merged Kata guest kernel fragments (generated)\n");
        for r in &self.requests {
            match r.value {
                ConfigValue::No => out.push_str(&format!("# {} is not set\n", r.name)),
                _ => out.push_str(&format!("{}={}\n", r.name, r.value)),
            }
        }
        out
    }
}

fn read_text(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::Input {
        path: path.to_path_buf(),
        problem: format!("cannot read: {e}"),
    })
}

/// `<dir>/<group>/*.conf` sorted by file name.
fn list_conf_files(configs_dir: &Path, group: &str) -> Result<Vec<(String, PathBuf)>> {
    let dir = configs_dir.join(group);
    let files = crate::sorted_files(
        &dir,
        ".conf",
        group,
        &format!("fragment directory `{group}/`"),
    )?;
    if files.is_empty() {
        return Err(Error::Input {
            path: dir,
            problem: format!("no *.conf fragments in `{group}/`"),
        });
    }
    Ok(files)
}

/// One `CONFIG_NAME` per line; `#` comments and blank lines allowed.
fn parse_whitelist(path: &Path) -> Result<BTreeMap<String, Origin>> {
    let text = read_text(path)?;
    let mut names = BTreeMap::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        check_name(line).map_err(|problem| Error::Syntax {
            file: WHITELIST_FILE.into(),
            line: n + 1,
            problem: format!("{problem} (the whitelist holds one option name per line, no value)"),
        })?;
        names.entry(line.to_string()).or_insert(Origin {
            file: WHITELIST_FILE.into(),
            line: n + 1,
        });
    }
    Ok(names)
}
