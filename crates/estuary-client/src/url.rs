//! EST base URLs: `https://host[:port][/path]`, the `/.well-known/est` prefix included or not.

use std::fmt;

use estuary_wire::operation::Operation;

use crate::ClientError;

/// A parsed EST server URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EstUrl {
    /// Host name or IP address (without brackets).
    pub host: String,
    /// Port (443 when not given).
    pub port: u16,
    /// The path up to and including `/.well-known/est` (and a label, if the URL has one),
    /// without a trailing slash.
    pub base_path: String,
}

impl EstUrl {
    /// Parses an `https` URL. A URL without a path gets `/.well-known/est` (the strongSwan and
    /// libest convention); one with a path is used as it is (the IoT Edge convention), so
    /// `https://h:8085/.well-known/est` and `https://h:8085/.well-known/est/label` both work.
    pub fn parse(text: &str) -> Result<Self, ClientError> {
        let uri: http::Uri = text.parse().map_err(|source| ClientError::BadUrl {
            text: text.to_string(),
            source,
        })?;
        match uri.scheme_str() {
            Some("https") => {}
            Some(other) => {
                return Err(ClientError::Config(format!(
                    "{text:?}: EST needs https, not {other}"
                )))
            }
            None => {
                return Err(ClientError::Config(format!(
                    "{text:?}: write the URL with https://"
                )))
            }
        }
        let host = uri
            .host()
            .ok_or_else(|| ClientError::Config(format!("{text:?} has no host")))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let path = uri.path().trim_end_matches('/');
        let base_path = if path.is_empty() {
            "/.well-known/est".to_string()
        } else {
            path.to_string()
        };
        Ok(EstUrl {
            host,
            port,
            base_path,
        })
    }

    /// The path of an operation, optionally under a label (RFC 7030 §3.2.2).
    pub fn operation_path(&self, label: Option<&str>, operation: Operation) -> String {
        match label {
            Some(l) if !l.is_empty() => format!("{}/{l}/{operation}", self.base_path),
            _ => format!("{}/{operation}", self.base_path),
        }
    }

    /// `host:port` for the `Host` header (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for EstUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "https://{}{}", self.authority(), self.base_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_clients_use() {
        let u = EstUrl::parse("https://localhost:8085/.well-known/est").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("localhost", 8085));
        assert_eq!(
            u.operation_path(None, Operation::CaCerts),
            "/.well-known/est/cacerts"
        );
        let u = EstUrl::parse("https://localhost:8085/.well-known/est/").unwrap();
        assert_eq!(
            u.operation_path(Some("edge-ca"), Operation::SimpleEnroll),
            "/.well-known/est/edge-ca/simpleenroll"
        );
        let u = EstUrl::parse("https://127.0.0.1:8085").unwrap();
        assert_eq!(
            u.operation_path(None, Operation::CaCerts),
            "/.well-known/est/cacerts"
        );
        let u = EstUrl::parse("https://[::1]/.well-known/est").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.authority().as_str()),
            ("::1", 443, "[::1]:443")
        );
        assert!(EstUrl::parse("http://x/.well-known/est").is_err());
        assert!(EstUrl::parse("localhost:8085").is_err());
    }
}
