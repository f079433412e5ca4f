//! Image recipes: `image-recipes/NAME.yaml` describes, as data, what goes into a
//! guest rootfs besides the agent (init mode, busybox, directories, device nodes,
//! small files, symlinks). Loading is strict: unknown keys, wrong types and
//! inconsistent trees are rejected with one line naming the file, the key path
//! and (when the YAML parser knows it) the line and column.

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

/// Where the agent is installed when it is the init process (upstream osbuilder
/// puts it at `/usr/bin/kata-agent` and links `/sbin/init` to it).
pub const AGENT_PATH: &str = "/usr/bin/kata-agent";
/// Paths that point at the agent when `init: agent`: the image boots through
/// `/sbin/init`, the initrd through `/init`.
pub const AGENT_INIT_LINKS: [&str; 2] = ["/sbin/init", "/init"];
/// Every rootfs records what went into it here.
pub const OSBUILDER_YAML_PATH: &str = "/var/lib/osbuilder/osbuilder.yaml";

/// A recipe failed to load. Display is always one line that names the file.
#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{}: cannot read recipe", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The YAML did not match the schema (unknown key, wrong type, bad value).
    #[error("{}{}: {key}: {message}", file.display(), location_suffix(*line, *column))]
    Parse {
        file: PathBuf,
        line: Option<usize>,
        column: Option<usize>,
        key: String,
        message: String,
    },
    /// The recipe parsed but describes an impossible or ambiguous tree.
    #[error("{}: {key}: {message}", file.display())]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
    #[error("unknown recipe `{name}`: no {}/{name}.yaml; available recipes: {}", dir.display(), if available.is_empty() { "(none)".to_string() } else { available.join(", ") })]
    Unknown {
        name: String,
        dir: PathBuf,
        available: Vec<String>,
    },
}

fn location_suffix(line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!(":{l}:{c}"),
        (Some(l), None) => format!(":{l}"),
        _ => String::new(),
    }
}

/// A rootfs recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// Must equal the file stem (`minimal` for `image-recipes/minimal.yaml`).
    pub name: String,
    /// Free text for humans; recorded in osbuilder.yaml.
    #[serde(default)]
    pub description: String,
    /// What runs as PID 1.
    pub init: InitMode,
    /// Install a static busybox and its applet links; absent means no busybox.
    #[serde(default)]
    pub busybox: Option<BusyboxSpec>,
    #[serde(default)]
    pub directories: Vec<DirectorySpec>,
    #[serde(default)]
    pub devices: Vec<DeviceSpec>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    #[serde(default)]
    pub symlinks: Vec<SymlinkSpec>,
    /// Debian packages unpacked into the tree, pinned by the lock next to
    /// the recipe (see [`crate::packages`]).
    #[serde(default)]
    pub packages: Option<PackagesSpec>,
}

/// `packages:` of a recipe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackagesSpec {
    /// Debian package names; their dependencies come with them.
    pub install: Vec<String>,
    /// Paths left out of every package (documentation, manuals, locales).
    #[serde(default)]
    pub exclude: Vec<GuestPath>,
    /// How the packages become the tree (mmdebstrap's word for it).
    #[serde(default)]
    pub variant: PackageVariant,
}

/// `packages.variant`: how a recipe's packages get into its tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageVariant {
    /// Only the packages' files, unpacked by the builder: no maintainer
    /// script runs (mmdebstrap's `extract`). For agent-as-init guests.
    #[default]
    Extract,
    /// Debian's `Essential: yes` set plus the list, installed by mmdebstrap
    /// (`--variant=essential`) with their maintainer scripts: a real Debian
    /// userland, as an `init: systemd` guest needs.
    Essential,
}

impl PackageVariant {
    pub fn as_str(self) -> &'static str {
        match self {
            PackageVariant::Extract => "extract",
            PackageVariant::Essential => "essential",
        }
    }
    pub fn is_extract(&self) -> bool {
        *self == PackageVariant::Extract
    }
}

/// What the kernel starts as PID 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub enum InitMode {
    /// The kata-agent is init (upstream `AGENT_INIT=yes`).
    Agent,
    /// systemd is init and starts the agent as a service (upstream
    /// `AGENT_INIT=no`); the tree is a Debian system installed by
    /// mmdebstrap (`packages.variant: essential`).
    Systemd,
}

impl TryFrom<String> for InitMode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.as_str() {
            "agent" => Ok(InitMode::Agent),
            "systemd" => Ok(InitMode::Systemd),
            other => Err(format!(
                "unknown init mode `{other}`: expected `agent` or `systemd`"
            )),
        }
    }
}

impl From<InitMode> for String {
    fn from(m: InitMode) -> String {
        m.as_str().to_string()
    }
}

impl InitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            InitMode::Agent => "agent",
            InitMode::Systemd => "systemd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusyboxSpec {
    /// Where the busybox binary goes; applet links point here.
    #[serde(default = "default_busybox_path")]
    pub path: GuestPath,
    /// Applets (as absolute paths, from `busybox --list-full`) not to link,
    /// typically `/sbin/init` and `/linuxrc`, which belong to the agent.
    #[serde(default)]
    pub exclude_applets: Vec<GuestPath>,
}

fn default_busybox_path() -> GuestPath {
    GuestPath("/bin/busybox".into())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectorySpec {
    pub path: GuestPath,
    pub mode: Mode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceSpec {
    pub path: GuestPath,
    pub kind: DeviceKind,
    pub major: u32,
    pub minor: u32,
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Char,
    Block,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub path: GuestPath,
    pub mode: Mode,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SymlinkSpec {
    pub path: GuestPath,
    pub target: String,
}

/// Permission bits (at most 0o7777), written in YAML as a quoted octal string
/// such as `"0755"` so that YAML's own integer rules cannot change its meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(into = "String")]
pub struct Mode(pub u32);

impl TryFrom<String> for Mode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let valid = (3..=4).contains(&s.len()) && s.bytes().all(|b| (b'0'..=b'7').contains(&b));
        if !valid {
            return Err(format!(
                "invalid mode \"{s}\": expected 3 or 4 octal digits such as \"0755\""
            ));
        }
        Ok(Mode(u32::from_str_radix(&s, 8).expect("validated octal")))
    }
}

impl From<Mode> for String {
    fn from(m: Mode) -> String {
        format!("{:04o}", m.0)
    }
}

/// An absolute, normalised path inside the guest (`/etc/hostname`): no `.`,
/// `..`, empty components or trailing slash, valid UTF-8, not `/` itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub struct GuestPath(String);

impl TryFrom<String> for GuestPath {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let Some(rest) = s.strip_prefix('/') else {
            return Err(format!("path `{s}` must be absolute (start with /)"));
        };
        if rest.is_empty() {
            return Err("path `/` cannot be declared: the root directory always exists".into());
        }
        for component in rest.split('/') {
            if component.is_empty() || component == "." || component == ".." {
                return Err(format!(
                    "path `{s}` must be normalised (no empty, `.` or `..` components, no trailing /)"
                ));
            }
        }
        if s.contains('\0') || s.contains('\n') || s.contains('"') || s.contains('\\') {
            return Err(format!(
                "path `{s}` contains a NUL, newline, quote or backslash"
            ));
        }
        Ok(GuestPath(s))
    }
}

impl From<GuestPath> for String {
    fn from(p: GuestPath) -> String {
        p.0
    }
}

impl fmt::Display for GuestPath {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl GuestPath {
    /// Builds a guest path from a string, with the same rules as the recipe.
    pub fn new(s: &str) -> Result<Self, String> {
        Self::try_from(s.to_string())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The path without its leading `/`, for joining under a tree root.
    pub fn relative(&self) -> &str {
        &self.0[1..]
    }
    /// The parent directory, or None when the parent is `/`.
    pub fn parent(&self) -> Option<GuestPath> {
        let idx = self.0.rfind('/').expect("absolute");
        (idx > 0).then(|| GuestPath(self.0[..idx].to_string()))
    }
}

/// Deserializes a string-valued scalar through `TryFrom<String>` inside the
/// visitor, so that the YAML parser attaches the scalar's line and column to
/// the error. Numbers get a message asking for a quoted string.
struct ScalarVisitor<T>(&'static str, std::marker::PhantomData<T>);

impl<T: TryFrom<String, Error = String>> serde::de::Visitor<'_> for ScalarVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<T, E> {
        T::try_from(v.to_string()).map_err(E::custom)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<T, E> {
        Err(E::custom(format!(
            "expected {}, not the number {v} (quote it)",
            self.0
        )))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<T, E> {
        Err(E::custom(format!(
            "expected {}, not the number {v} (quote it)",
            self.0
        )))
    }
}

macro_rules! deserialize_via_scalar {
    ($ty:ty, $what:expr) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(ScalarVisitor::<$ty>($what, std::marker::PhantomData))
            }
        }
    };
}

deserialize_via_scalar!(InitMode, "an init mode (`agent` or `systemd`)");
deserialize_via_scalar!(Mode, "a quoted octal mode such as \"0755\"");
deserialize_via_scalar!(GuestPath, "an absolute path such as /etc/hostname");

impl Recipe {
    /// Parses and validates one recipe file.
    pub fn load(path: &Path) -> Result<Recipe, RecipeError> {
        let text = std::fs::read_to_string(path).map_err(|source| RecipeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let recipe = Self::parse(&text, path)?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if recipe.name != stem {
            return Err(RecipeError::Invalid {
                file: path.to_path_buf(),
                key: "name".into(),
                message: format!(
                    "`{}` does not match the file name; set `name: {stem}` or rename the file",
                    recipe.name
                ),
            });
        }
        Ok(recipe)
    }

    /// Parses and validates recipe text; `file` is only used in messages.
    pub fn parse(text: &str, file: &Path) -> Result<Recipe, RecipeError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let recipe: Recipe = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.inner();
            let location = inner.location();
            RecipeError::Parse {
                file: file.to_path_buf(),
                line: location.as_ref().map(|l| l.line()),
                column: location.as_ref().map(|l| l.column()),
                message: bare_yaml_message(&inner.to_string(), &key),
                key,
            }
        })?;
        recipe.validate(file)?;
        Ok(recipe)
    }

    /// Finds `NAME.yaml` in `recipes_dir` and loads it.
    pub fn find(recipes_dir: &Path, name: &str) -> Result<Recipe, RecipeError> {
        let path = recipes_dir.join(format!("{name}.yaml"));
        let plain_name = !name.is_empty() && !name.contains(['/', '\\']) && !name.starts_with('.');
        if !plain_name || !path.is_file() {
            return Err(RecipeError::Unknown {
                name: name.to_string(),
                dir: recipes_dir.to_path_buf(),
                available: Self::available(recipes_dir),
            });
        }
        Self::load(&path)
    }

    /// Names of the recipes in `recipes_dir`, sorted.
    pub fn available(recipes_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(recipes_dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let p = e.path();
                (p.extension()? == "yaml").then(|| p.file_stem()?.to_str().map(String::from))?
            })
            .collect();
        names.sort();
        names
    }

    /// Paths the builder itself creates for this recipe (agent, init links,
    /// osbuilder.yaml, busybox binary); a recipe must not declare them.
    pub fn builder_paths(&self) -> Vec<GuestPath> {
        let mut paths = vec![GuestPath(OSBUILDER_YAML_PATH.into())];
        match self.init {
            InitMode::Agent => {
                paths.push(GuestPath(AGENT_PATH.into()));
                paths.extend(AGENT_INIT_LINKS.iter().map(|p| GuestPath(p.to_string())));
            }
            InitMode::Systemd => paths.push(GuestPath(AGENT_PATH.into())),
        }
        if let Some(bb) = &self.busybox {
            paths.push(bb.path.clone());
        }
        paths
    }

    fn validate(&self, file: &Path) -> Result<(), RecipeError> {
        let invalid = |key: String, message: String| RecipeError::Invalid {
            file: file.to_path_buf(),
            key,
            message,
        };
        if self.name.is_empty()
            || !self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        {
            return Err(invalid(
                "name".into(),
                format!(
                    "`{}` must be non-empty lowercase letters, digits, - or _",
                    self.name
                ),
            ));
        }
        let variant = self.packages.as_ref().map(|p| p.variant);
        match (self.init, variant) {
            (InitMode::Systemd, Some(PackageVariant::Essential)) | (InitMode::Agent, None | Some(PackageVariant::Extract)) => {}
            (InitMode::Systemd, _) => {
                return Err(invalid(
                    "packages.variant".into(),
                    "`init: systemd` needs a Debian system: set `packages: {variant: essential, install: [systemd, systemd-sysv, ...]}`".into(),
                ))
            }
            (InitMode::Agent, Some(PackageVariant::Essential)) => {
                return Err(invalid(
                    "packages.variant".into(),
                    "`essential` installs a Debian system for `init: systemd`; an `init: agent` guest unpacks its packages (`variant: extract`)".into(),
                ))
            }
        }
        if self.init == InitMode::Systemd && self.busybox.is_some() {
            return Err(invalid(
                "busybox".into(),
                "a systemd guest has Debian's coreutils (busybox applets would collide with them); remove `busybox`".into(),
            ));
        }
        if let Some(p) = &self.packages {
            if p.install.is_empty() {
                return Err(invalid(
                    "packages.install".into(),
                    "is empty; list Debian packages or remove `packages`".into(),
                ));
            }
            for (i, name) in p.install.iter().enumerate() {
                let valid = name.len() >= 2
                    && name
                        .bytes()
                        .next()
                        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                    && name.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.".contains(&b)
                    });
                if !valid {
                    return Err(invalid(
                        format!("packages.install[{i}]"),
                        format!("`{name}` is not a Debian package name (lowercase letters, digits, + - .; no version: the lock pins it)"),
                    ));
                }
            }
        }
        let dirs: BTreeSet<&GuestPath> = self.directories.iter().map(|d| &d.path).collect();
        let mut seen: BTreeSet<GuestPath> = BTreeSet::new();
        let mut entries: Vec<(String, &GuestPath)> = Vec::new();
        for (i, d) in self.directories.iter().enumerate() {
            entries.push((format!("directories[{i}].path"), &d.path));
        }
        for (i, d) in self.devices.iter().enumerate() {
            entries.push((format!("devices[{i}].path"), &d.path));
        }
        for (i, f) in self.files.iter().enumerate() {
            entries.push((format!("files[{i}].path"), &f.path));
        }
        for (i, s) in self.symlinks.iter().enumerate() {
            entries.push((format!("symlinks[{i}].path"), &s.path));
        }
        let builder_paths = self.builder_paths();
        for (key, path) in &entries {
            if builder_paths.contains(path) {
                return Err(invalid(
                    key.clone(),
                    format!("{path} is created by the builder for `init: {}`; remove it from the recipe", self.init.as_str()),
                ));
            }
            if !seen.insert((*path).clone()) {
                return Err(invalid(key.clone(), format!("{path} is declared twice")));
            }
        }
        let builder_entries: Vec<(String, &GuestPath)> = builder_paths
            .iter()
            .map(|p| (format!("(builder path {p})"), p))
            .collect();
        // A systemd guest's packages make the base tree: its parents are
        // checked when the tree is built, against what the packages made.
        let declared_parents = self.init == InitMode::Agent;
        for (key, path) in entries.iter().chain(builder_entries.iter()) {
            if !declared_parents {
                continue;
            }
            if let Some(parent) = path.parent() {
                if !dirs.contains(&parent) {
                    return Err(invalid(
                        key.clone(),
                        format!("parent directory {parent} of {path} is not declared; add it to `directories`"),
                    ));
                }
            }
        }
        for (i, s) in self.symlinks.iter().enumerate() {
            if s.target.is_empty() || s.target.contains('\0') {
                return Err(invalid(
                    format!("symlinks[{i}].target"),
                    "target must be a non-empty string without NUL".into(),
                ));
            }
        }
        if let Some(bb) = &self.busybox {
            for (i, p) in bb.exclude_applets.iter().enumerate() {
                if bb.exclude_applets[..i].contains(p) {
                    return Err(invalid(
                        format!("busybox.exclude_applets[{i}]"),
                        format!("{p} is listed twice"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// serde_yaml_ng's Display repeats the key path and appends the position; we
/// print both ourselves, so keep only the message.
fn bare_yaml_message(full: &str, key: &str) -> String {
    let mut msg = full;
    if let Some(idx) = msg.rfind(" at line ") {
        let tail = &msg[idx + " at line ".len()..];
        let looks_like_position = tail.split_once(" column ").is_some_and(|(l, c)| {
            l.bytes().all(|b| b.is_ascii_digit()) && c.bytes().all(|b| b.is_ascii_digit())
        });
        if looks_like_position {
            msg = &msg[..idx];
        }
    }
    // serde_yaml_ng prefixes its own (sometimes shorter) key path.
    if let Some((head, rest)) = msg.split_once(": ") {
        if !head.is_empty() && key.starts_with(head) {
            msg = rest;
        }
    }
    msg.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
name: t
init: agent
directories:
  - {path: /etc, mode: \"0755\"}
  - {path: /usr, mode: \"0755\"}
  - {path: /usr/bin, mode: \"0755\"}
  - {path: /sbin, mode: \"0755\"}
  - {path: /var, mode: \"0755\"}
  - {path: /var/lib, mode: \"0755\"}
  - {path: /var/lib/osbuilder, mode: \"0755\"}
";

    fn parse(text: &str) -> Result<Recipe, RecipeError> {
        Recipe::parse(text, Path::new("image-recipes/t.yaml"))
    }

    #[test]
    fn good_recipe_parses() {
        let r = parse(GOOD).unwrap();
        assert_eq!(r.init, InitMode::Agent);
        assert_eq!(r.directories.len(), 7);
        assert!(r.busybox.is_none());
    }

    #[test]
    fn unknown_key_names_file_line_and_key_path() {
        let text = format!("{GOOD}busybox:\n  path: /bin/busybox\n  applets: [sh]\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("image-recipes/t.yaml:13:3: busybox.applets: unknown field `applets`, expected `path` or `exclude_applets`"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        assert!(!err.contains(" at line "), "{err}");
    }

    #[test]
    fn wrong_type_names_key_path_and_line() {
        let text = format!(
            "{GOOD}files:\n  - path: /etc/hostname\n    mode: \"0644\"\n    content: [a, b]\n"
        );
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(err, "image-recipes/t.yaml:14:14: files[0].content: invalid type: sequence, expected a string");
    }

    #[test]
    fn numeric_mode_is_rejected_with_fix() {
        let text =
            format!("{GOOD}files:\n  - path: /etc/hostname\n    mode: 644\n    content: x\n");
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(err, "image-recipes/t.yaml:13:11: files[0].mode: expected a quoted octal mode such as \"0755\", not the number 644 (quote it)");
        // A leading zero keeps YAML from reading a number: taken as octal.
        let text =
            format!("{GOOD}files:\n  - path: /etc/hostname\n    mode: 0644\n    content: x\n");
        assert_eq!(parse(&text).unwrap().files[0].mode, Mode(0o644));
        let text =
            format!("{GOOD}files:\n  - path: /etc/hostname\n    mode: \"0948\"\n    content: x\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("files[0].mode: invalid mode \"0948\""),
            "{err}"
        );
    }

    #[test]
    fn systemd_init_needs_an_essential_debian_system() {
        let systemd = "name: t\ninit: systemd\n";
        let err = parse(systemd).unwrap_err().to_string();
        assert_eq!(err, "image-recipes/t.yaml: packages.variant: `init: systemd` needs a Debian system: set `packages: {variant: essential, install: [systemd, systemd-sysv, ...]}`");
        let extract = format!("{systemd}packages: {{install: [systemd]}}\n");
        assert!(parse(&extract)
            .unwrap_err()
            .to_string()
            .contains("packages.variant"));
        // Parents come from the packages: /etc/systemd/system is not declared.
        let ok = format!(
            "{systemd}packages: {{variant: essential, install: [systemd, systemd-sysv]}}\n\
             symlinks:\n  - {{path: /etc/systemd/system/default.target, target: kata-containers.target}}\n"
        );
        let r = parse(&ok).unwrap();
        assert_eq!(r.init, InitMode::Systemd);
        assert_eq!(r.packages.unwrap().variant, PackageVariant::Essential);
        let with_busybox = format!("{ok}busybox: {{path: /bin/busybox}}\n");
        let err = parse(&with_busybox).unwrap_err().to_string();
        assert!(
            err.contains("busybox: a systemd guest has Debian's coreutils"),
            "{err}"
        );
        let agent_declared =
            format!("{ok}files:\n  - {{path: /usr/bin/kata-agent, mode: \"0755\", content: x}}\n");
        let err = parse(&agent_declared).unwrap_err().to_string();
        assert!(
            err.contains("created by the builder for `init: systemd`"),
            "{err}"
        );
    }

    #[test]
    fn essential_variant_is_refused_for_agent_init() {
        let text = format!("{GOOD}packages: {{variant: essential, install: [iptables]}}\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains(
                "packages.variant: `essential` installs a Debian system for `init: systemd`"
            ),
            "{err}"
        );
        let err = parse(&GOOD.replace("init: agent", "init: upstart"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown init mode `upstart`: expected `agent` or `systemd`"),
            "{err}"
        );
    }

    #[test]
    fn relative_and_unnormalised_paths_are_rejected() {
        let err = parse(&GOOD.replace("path: /etc,", "path: etc,"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("directories[0].path: path `etc` must be absolute"),
            "{err}"
        );
        let err = parse(&GOOD.replace("path: /etc,", "path: /etc/../x,"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("must be normalised"), "{err}");
    }

    #[test]
    fn undeclared_parent_and_duplicates_are_rejected() {
        let text = format!("{GOOD}files:\n  - {{path: /opt/x, mode: \"0644\", content: x}}\n");
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(err, "image-recipes/t.yaml: files[0].path: parent directory /opt of /opt/x is not declared; add it to `directories`");
        let text = format!("{GOOD}symlinks:\n  - {{path: /etc, target: /x}}\n");
        let err = parse(&text).unwrap_err().to_string();
        assert_eq!(
            err,
            "image-recipes/t.yaml: symlinks[0].path: /etc is declared twice"
        );
        let err = parse(&GOOD.replace("  - {path: /sbin, mode: \"0755\"}\n", ""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("parent directory /sbin of /sbin/init is not declared"),
            "{err}"
        );
        let text = format!("{GOOD}files:\n  - {{path: /sbin/init, mode: \"0755\", content: x}}\n");
        let err = parse(&text).unwrap_err().to_string();
        assert!(
            err.contains("/sbin/init is created by the builder"),
            "{err}"
        );
    }

    #[test]
    fn unknown_recipe_lists_available_ones() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.yaml"), GOOD).unwrap();
        std::fs::write(
            dir.path().join("other.yaml"),
            GOOD.replace("name: t", "name: other"),
        )
        .unwrap();
        let err = Recipe::find(dir.path(), "nope").unwrap_err().to_string();
        assert_eq!(
            err,
            format!(
                "unknown recipe `nope`: no {}/nope.yaml; available recipes: other, t",
                dir.path().display()
            )
        );
        assert!(Recipe::find(dir.path(), "../t").is_err());
        assert_eq!(Recipe::find(dir.path(), "t").unwrap().name, "t");
        std::fs::write(dir.path().join("bad.yaml"), GOOD).unwrap();
        let err = Recipe::find(dir.path(), "bad").unwrap_err().to_string();
        assert!(err.ends_with("bad.yaml: name: `t` does not match the file name; set `name: bad` or rename the file"), "{err}");
    }

    #[test]
    fn shipped_recipes_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../image-recipes");
        let names = Recipe::available(&dir);
        assert!(names.contains(&"minimal".to_string()), "{names:?}");
        for name in names {
            Recipe::find(&dir, &name).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
