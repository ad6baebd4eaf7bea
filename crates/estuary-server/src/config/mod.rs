//! The server's configuration file (`DATA_DIR/estuary.toml`).
//!
//! - [`file`]: the file format, serde types with unknown keys rejected, each checked into its
//!   runtime form next to its definition (every error naming its key);
//! - [`policy`]: the runtime [`Settings`] the server uses (labels, auth rules, limits);
//! - [`template`]: the commented file `estuary serve` writes on first start, and the key
//!   reference that `docs/configuration.md` carries (generated from the same table, checked
//!   by a test).

use std::path::PathBuf;

pub mod file;
pub mod policy;
pub mod template;

#[cfg(test)]
mod tests;

pub use file::{
    bootstrap_name, AuditConfig, ConfigFile, CrlConfig, DatabaseConfig, KeyUriText, LabelConfig,
    LimitsConfig, ProfileConfig, RateLimitConfig, RegistrationAuthorityConfig, UpstreamConfig,
    UserConfig, DEFAULT_FAILED_AUTH_COST, DEFAULT_PER_ADDRESS_PER_MINUTE, MAX_CONFIG_BYTES,
};
pub use policy::{
    describe_validity, is_operation, AuthRules, CrlSettings, CrlSource, LabelPolicy, Limits,
    RaRule, Settings, SubjectRule, UpstreamCredential, UpstreamSettings, CLIENT_CN, DEFAULT_LABEL,
};

/// `text` (a TOML parser's message quotes the line it failed on, which may be a database URL)
/// with the password of every URL's user info (`scheme://user:PASSWORD@host`) and every
/// `password=VALUE` replaced by `***`.
pub fn redact_passwords(text: &str) -> String {
    let ends_a_word = |c: char| c == '"' || c == '\'' || c.is_whitespace();
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (head, tail) = rest.split_at(at + 3);
        out.push_str(head);
        let word_end = tail.find(ends_a_word).unwrap_or(tail.len());
        let word = &tail[..word_end];
        // The user info ends at the last '@' of the word (a raw '@' or '/' may be in it).
        let user_info = word
            .rfind('@')
            .and_then(|sign| Some((word[..sign].split_once(':')?.0, &word[sign..])));
        match user_info {
            Some((user, host)) => {
                out.push_str(user);
                out.push_str(":***");
                out.push_str(host);
            }
            None => out.push_str(word),
        }
        rest = &tail[word_end..];
    }
    out.push_str(rest);
    let mut redacted = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(at) = rest.to_ascii_lowercase().find("password=") {
        let (head, tail) = rest.split_at(at + "password=".len());
        redacted.push_str(head);
        redacted.push_str("***");
        let value_end = tail
            .find(|c: char| c == '&' || ends_a_word(c))
            .unwrap_or(tail.len());
        rest = &tail[value_end..];
    }
    redacted.push_str(rest);
    redacted
}

/// Why a config file could not be read or is not valid.
///
/// `Display` gives the whole message, the underlying error's text included (`FILE: KEY:
/// what is wrong`), so print it with `{}` rather than by walking `source()`, which is kept
/// for callers that need the I/O error kind or the TOML error's span.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read (or its metadata not obtained).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The path is not a regular file (a FIFO would hang, a device never end).
    #[error("{}: not a regular file", path.display())]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is larger than [`MAX_CONFIG_BYTES`].
    #[error("{}: larger than {MAX_CONFIG_BYTES} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid TOML, or has an unknown key or a value of the wrong type.
    #[error("{}: {}", path.display(), redact_passwords(&source.to_string()))]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's error (it names the key and the line).
        #[source]
        source: toml::de::Error,
    },
    /// A value is not valid; `key` is its dotted path (`labels.sensors.profile`).
    #[error("{key}: {message}")]
    Invalid {
        /// The dotted key.
        key: String,
        /// What is wrong, and what is accepted.
        message: String,
    },
    /// A file that parsed but whose values are not valid.
    #[error("{}: {source}", path.display())]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is not valid in it.
        #[source]
        source: Box<ConfigError>,
    },
}

impl ConfigError {
    /// An invalid value at `key`.
    pub fn invalid(key: impl Into<String>, message: impl std::fmt::Display) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.to_string(),
        }
    }

    /// This error, as found in the file at `path`.
    pub fn in_file(self, path: impl Into<PathBuf>) -> Self {
        ConfigError::InFile {
            path: path.into(),
            source: Box::new(self),
        }
    }

    /// The dotted key of an invalid value, if the error is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::InFile { source, .. } => source.key(),
            _ => None,
        }
    }
}
