//! The YAML file: its format (`schema`), its durations, and the errors that name a YAML path.

pub mod error;
pub mod schema;
pub mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use schema::FileConfig;

use std::path::Path;

/// A parsed file and the SHA-256 of its bytes (compare with `sha256sum portico.yaml`).
pub struct Loaded {
    pub config: FileConfig,
    pub sha256: String,
}

/// Reads and parses `path` into the file format. Parse errors (bad YAML, unknown keys, wrong
/// types) stop at the first one, as serde does; semantic errors are collected later by
/// [`crate::snapshot::Snapshot::build`], all of them at once.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    use sha2::Digest;
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors::one(
            "",
            format!("cannot read {}: {}", path.display(), os_message(&e)),
        )
    })?;
    let digest = sha2::Sha256::digest(text.as_bytes());
    let sha256 = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(Loaded {
        config: parse(&text)?,
        sha256,
    })
}

/// An I/O error as a person reads it: `No such file or directory`, without `(os error 2)`.
pub fn os_message(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.split_once(" (os error") {
        Some((message, _)) => message.to_owned(),
        None => text,
    }
}

/// Parses YAML text into the file format. An empty document is an empty config.
pub fn parse(text: &str) -> Result<FileConfig, ConfigErrors> {
    if text.trim().is_empty() {
        return Err(ConfigErrors::one("", "the file is empty"));
    }
    serde_yaml::from_str(text).map_err(|e| ConfigErrors::from_yaml(&e))
}
