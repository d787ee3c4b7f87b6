//! The YAML file: its format (`schema`), its durations, and the errors that name a YAML path.

pub mod collect;
pub mod error;
pub mod schema;
pub mod validate;

pub use error::{ConfigError, ConfigErrors};
pub use schema::FileConfig;

use std::path::Path;

/// A parsed file and the SHA-256 of its bytes (compare with `sha256sum portico.yaml`).
#[derive(Default)]
pub struct Loaded {
    pub config: FileConfig,
    pub sha256: String,
    /// What did not parse (unknown keys, wrong types), the values taken out of `config`; the
    /// semantic checks of [`crate::snapshot::Snapshot::build`] add theirs to these.
    pub errors: ConfigErrors,
    /// The file's text: an invalid file's errors are given their lines from it.
    pub text: String,
}

impl Loaded {
    /// A config that parsed, with no file behind it (tests, fuzzing).
    pub fn from_config(config: FileConfig) -> Loaded {
        Loaded {
            config,
            ..Loaded::default()
        }
    }
}

/// Reads and parses `path` into the file format. Every parse error is collected (see
/// [`collect`]); when the file could be repaired around them, they travel in
/// [`Loaded::errors`] so the semantic checks run too and `-t` reports all problems at once.
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
    let (config, errors) = read(&text)?;
    Ok(Loaded {
        config,
        sha256,
        errors,
        text,
    })
}

/// The file format from YAML text, repaired around what did not parse, with those errors;
/// `Err` (every error, with its line) when it cannot be repaired. A valid file is parsed once.
fn read(text: &str) -> Result<(FileConfig, ConfigErrors), ConfigErrors> {
    if text.trim().is_empty() {
        return Err(ConfigErrors::one("", "the file is empty"));
    }
    if let Ok(config) = serde_yaml::from_str(text) {
        return Ok((config, ConfigErrors::default()));
    }
    match collect::every_error(text) {
        (Some(config), errors) => Ok((config, errors)),
        (None, mut errors) => {
            errors.locate(text);
            Err(errors)
        }
    }
}

/// An I/O error as a person reads it: `No such file or directory`, without `(os error 2)`.
pub fn os_message(e: &impl std::fmt::Display) -> String {
    let text = e.to_string();
    match text.split_once(" (os error") {
        Some((message, _)) => message.to_owned(),
        None => text,
    }
}

/// Parses YAML text into the file format, or every parse error with its line.
pub fn parse(text: &str) -> Result<FileConfig, ConfigErrors> {
    let (config, mut errors) = read(text)?;
    if errors.is_empty() {
        return Ok(config);
    }
    errors.locate(text);
    Err(errors)
}
