//! Configuration errors: each one names the YAML path it is about.

use std::fmt;

/// One problem in the file, e.g. `routes[2].upstream: unknown upstream "api"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted YAML path (`upstreams.app.peers[0]`); empty for the whole file.
    pub path: String,
    pub message: String,
    /// The line of the file the path is on, when known.
    pub line: Option<usize>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one file. Never empty when returned as an `Err`.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigErrors(vec![ConfigError {
            path: path.into(),
            message: message.into(),
            line: None,
        }])
    }

    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
            line: None,
        });
    }

    /// Gives each error the line of its path in `text` (the file), and puts them in the file's
    /// order. The file is read for lines only here, when it has errors.
    pub fn locate(&mut self, text: &str) {
        let lines = super::collect::Lines::of(text);
        for e in &mut self.0 {
            e.line = e.line.or_else(|| lines.line(&e.path));
        }
        self.0.sort_by_key(|e| e.line.unwrap_or(0));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(value)` when nothing was pushed, else every error pushed.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// serde_yaml already renders the path (`routes[0].websocket: unknown field ...`) and the
    /// position; keep its words, they name the key and the expected ones.
    pub fn from_yaml(e: &serde_yaml::Error) -> Self {
        let text = e.to_string();
        match text.split_once(": ") {
            Some((path, rest)) if looks_like_path(path) => ConfigErrors::one(path, rest),
            _ => ConfigErrors::one("", text),
        }
    }
}

fn looks_like_path(s: &str) -> bool {
    !s.is_empty()
        && !s.contains(' ')
        && s.chars()
            .all(|c| c.is_alphanumeric() || "._-[]*".contains(c))
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
