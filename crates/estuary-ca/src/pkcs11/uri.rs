//! PKCS#11 URIs (RFC 7512): which token, which key, which module, and where the PIN is.
//!
//! ```text
//! pkcs11:token=estuary;object=ca-key?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/estuary/pin
//! ```
//!
//! Path attributes (RFC 7512 §2.3) understood: `token`, `manufacturer`, `model`, `serial`,
//! `slot-id` (which token), `object` (the key's CKA_LABEL), `id` (its CKA_ID, usually
//! percent-encoded bytes) and `type` (only `private`). Query attributes: `module-path`,
//! `pin-source` (only `file:` + an absolute path) and `pin-value`. Anything else is refused
//! rather than ignored: a URI that selects a key differently than its writer meant must not
//! quietly select another key.

use std::fmt;
use std::path::PathBuf;

use zeroize::Zeroizing;

/// A parsed PKCS#11 URI naming a CA key. Its `Debug` and `Display` never show a `pin-value`.
#[derive(Clone, PartialEq, Eq)]
pub struct Pkcs11Uri {
    /// `token`: the token label (CK_TOKEN_INFO label, without padding).
    pub token: Option<String>,
    /// `manufacturer`: the token's manufacturerID.
    pub manufacturer: Option<String>,
    /// `model`: the token's model.
    pub model: Option<String>,
    /// `serial`: the token's serialNumber.
    pub serial: Option<String>,
    /// `slot-id`: the slot's number (RFC 7512 §2.3, decimal).
    pub slot_id: Option<u64>,
    /// `object`: the key's CKA_LABEL.
    pub object: Option<String>,
    /// `id`: the key's CKA_ID (bytes).
    pub id: Option<Vec<u8>>,
    /// `module-path`: the PKCS#11 library to load.
    pub module_path: Option<PathBuf>,
    /// `pin-source=file:PATH`: a file whose first line is the user PIN.
    pub pin_source: Option<PathBuf>,
    /// `pin-value`: the PIN itself (shows in the config file and wherever the URI is written).
    pin_value: Option<Zeroizing<String>>,
    /// The URI as given, with any `pin-value` replaced by `***`.
    redacted: String,
}

/// Why a PKCS#11 URI was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PKCS#11 URI {uri}: {problem}")]
pub struct UriError {
    /// The URI, with any PIN replaced by `***`.
    pub uri: String,
    /// What is wrong.
    pub problem: String,
}

impl Pkcs11Uri {
    /// Parses `text` (RFC 7512 §2.3 syntax; percent-decoding per RFC 3986 §2.1).
    pub fn parse(text: &str) -> Result<Self, UriError> {
        let redacted = redact(text);
        let fail = |problem: String| UriError {
            uri: redacted.clone(),
            problem,
        };
        let rest = text
            .strip_prefix("pkcs11:")
            .ok_or_else(|| fail("does not begin with \"pkcs11:\"".into()))?;
        let (path, query) = match rest.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rest, None),
        };
        let mut uri = Pkcs11Uri {
            token: None,
            manufacturer: None,
            model: None,
            serial: None,
            slot_id: None,
            object: None,
            id: None,
            module_path: None,
            pin_source: None,
            pin_value: None,
            redacted: redacted.clone(),
        };
        // RFC 7512 §2.3: an attribute may appear only once.
        let mut seen: Vec<String> = Vec::new();
        let mut once = |name: &str| -> Result<(), UriError> {
            if seen.iter().any(|s| s == name) {
                return Err(fail(format!("attribute {name:?} appears twice")));
            }
            seen.push(name.to_string());
            Ok(())
        };
        for attr in path.split(';').filter(|a| !a.is_empty()) {
            let (name, raw) = attr
                .split_once('=')
                .ok_or_else(|| fail(format!("{attr:?} is not NAME=VALUE")))?;
            once(name)?;
            let bytes = percent_decode(raw).map_err(|e| fail(format!("{name}: {e}")))?;
            let text = || {
                String::from_utf8(bytes.clone())
                    .map_err(|_| fail(format!("{name}: the value is not UTF-8")))
            };
            match name {
                "token" => uri.token = Some(text()?),
                "manufacturer" => uri.manufacturer = Some(text()?),
                "model" => uri.model = Some(text()?),
                "serial" => uri.serial = Some(text()?),
                "slot-id" => {
                    uri.slot_id = Some(text()?.parse().map_err(|_| {
                        fail(format!("slot-id {raw:?} is not a decimal number"))
                    })?)
                }
                "object" => uri.object = Some(text()?),
                "id" => uri.id = Some(bytes),
                "type" => {
                    let t = text()?;
                    if t != "private" {
                        return Err(fail(format!(
                            "type={t}: the CA key is a private key; use type=private or leave type out"
                        )));
                    }
                }
                "library-manufacturer" | "library-description" | "library-version"
                | "slot-description" | "slot-manufacturer" => {
                    return Err(fail(format!(
                        "path attribute {name:?} is not supported; select the token with token, manufacturer, model, serial or slot-id"
                    )))
                }
                other => return Err(fail(format!("unknown path attribute {other:?}"))),
            }
        }
        for attr in query.into_iter().flat_map(|q| q.split('&')) {
            if attr.is_empty() {
                continue;
            }
            let (name, raw) = attr
                .split_once('=')
                .ok_or_else(|| fail(format!("{attr:?} is not NAME=VALUE")))?;
            once(name)?;
            let bytes =
                Zeroizing::new(percent_decode(raw).map_err(|e| fail(format!("{name}: {e}")))?);
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|_| fail(format!("{name}: the value is not UTF-8")))?;
            match name {
                "module-path" => uri.module_path = Some(PathBuf::from(text)),
                "pin-source" => {
                    // RFC 7512 §2.4: pin-source is a URI; only local files are read.
                    let path = text
                        .strip_prefix("file://")
                        .or_else(|| text.strip_prefix("file:"))
                        .ok_or_else(|| {
                            fail(format!(
                                "pin-source {text:?}: only file:/ABSOLUTE/PATH is supported"
                            ))
                        })?;
                    let path = PathBuf::from(path);
                    if !path.is_absolute() {
                        return Err(fail(format!(
                            "pin-source {text:?}: the PIN file's path must be absolute"
                        )));
                    }
                    uri.pin_source = Some(path);
                }
                "pin-value" => uri.pin_value = Some(Zeroizing::new(text)),
                "module-name" => {
                    return Err(fail(
                        "module-name is not supported; give the library with module-path".into(),
                    ))
                }
                other => return Err(fail(format!("unknown query attribute {other:?}"))),
            }
        }
        if uri.pin_source.is_some() && uri.pin_value.is_some() {
            return Err(fail("give pin-source or pin-value, not both".into()));
        }
        if uri.object.is_none() && uri.id.is_none() {
            return Err(fail(
                "names no key: add object=LABEL (the key's label) or id=%01%02...".into(),
            ));
        }
        Ok(uri)
    }

    /// Whether the URI carries the PIN itself (`pin-value`).
    pub fn has_pin_value(&self) -> bool {
        self.pin_value.is_some()
    }

    /// The `pin-value`, if the URI has one.
    pub(crate) fn pin_value(&self) -> Option<&Zeroizing<String>> {
        self.pin_value.as_ref()
    }

    /// What the URI names, for logs and messages: token and key, never the PIN.
    pub fn describe(&self) -> String {
        let token = self
            .token
            .as_deref()
            .or(self.serial.as_deref())
            .unwrap_or("(first token)");
        let key = match (&self.object, &self.id) {
            (Some(label), _) => format!("object {label:?}"),
            (None, Some(id)) => format!("id {}", crate::issue::hex_lower(id)),
            (None, None) => "(no key)".into(),
        };
        format!("token {token:?}, {key}")
    }
}

impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pkcs11Uri").field(&self.redacted).finish()
    }
}

/// The URI as given, with any `pin-value` replaced by `***`.
impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl std::str::FromStr for Pkcs11Uri {
    type Err = UriError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Pkcs11Uri::parse(s)
    }
}

/// `text` (a PKCS#11 URI, parsed or not) with the value of every `pin-value` attribute
/// replaced by `***`: for `Debug` output of configuration that holds a URI.
pub fn redact(text: &str) -> String {
    // Any attribute whose name, percent-decoded, is pin-value, in the path (`;`) or the query
    // (`&`): a PIN put in the wrong place must not be echoed by the error that says so.
    let redact_attributes = |part: &str, separator: char| -> String {
        part.split(separator)
            .map(|attribute| {
                let name = attribute.split('=').next().unwrap_or("");
                let decoded = percent_decode(name)
                    .map(|n| String::from_utf8_lossy(&n).to_ascii_lowercase())
                    .unwrap_or_default();
                if decoded == "pin-value" || decoded.ends_with(":pin-value") {
                    format!("{name}=***")
                } else {
                    attribute.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join(&separator.to_string())
    };
    match text.split_once('?') {
        Some((path, query)) => format!(
            "{}?{}",
            redact_attributes(path, ';'),
            redact_attributes(query, '&')
        ),
        None => redact_attributes(text, ';'),
    }
}

/// RFC 3986 §2.1 percent-decoding (`%` followed by two hex digits).
fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding at {:?}", &text[i..]))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// Regression (attack review): a pin-value in the path, or with an encoded name, was
    /// echoed by the error that refused it.
    #[test]
    fn a_pin_value_anywhere_is_redacted() {
        for text in [
            "pkcs11:token=est;object=ca;pin-value=1234?module-path=/x.so",
            "pkcs11:token=est;object=ca?module-path=/x.so&pin%2Dvalue=1234",
            "pkcs11:pin-value=1234;token=est",
        ] {
            let shown = redact(text);
            assert!(!shown.contains("1234"), "{text}: {shown}");
            let e = Pkcs11Uri::parse(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!e.contains("1234"), "{text}: {e}");
        }
    }

    #[test]
    fn parses_token_object_module_and_pin_file() {
        let uri = Pkcs11Uri::parse(
            "pkcs11:token=estuary;object=ca%20key;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/estuary/pin",
        )
        .unwrap();
        assert_eq!(uri.token.as_deref(), Some("estuary"));
        assert_eq!(uri.object.as_deref(), Some("ca key"));
        assert_eq!(
            uri.module_path.as_deref(),
            Some(std::path::Path::new("/usr/lib/softhsm/libsofthsm2.so"))
        );
        assert_eq!(
            uri.pin_source.as_deref(),
            Some(std::path::Path::new("/etc/estuary/pin"))
        );
        assert!(!uri.has_pin_value());
    }

    #[test]
    fn id_is_percent_decoded_bytes_and_slot_id_a_number() {
        let uri =
            Pkcs11Uri::parse("pkcs11:slot-id=3;id=%01%ab%FF?pin-source=file:///run/pin").unwrap();
        assert_eq!(uri.id.as_deref(), Some(&[0x01, 0xab, 0xff][..]));
        assert_eq!(uri.slot_id, Some(3));
        assert_eq!(
            uri.pin_source.as_deref(),
            Some(std::path::Path::new("/run/pin"))
        );
        assert_eq!(uri.describe(), "token \"(first token)\", id 01abff");
    }

    #[test]
    fn pin_value_is_kept_but_never_shown() {
        let uri =
            Pkcs11Uri::parse("pkcs11:token=t;object=k?pin-value=s3cr3t&module-path=/m.so").unwrap();
        assert!(uri.has_pin_value());
        assert_eq!(uri.pin_value().map(|p| p.as_str()), Some("s3cr3t"));
        for shown in [format!("{uri:?}"), uri.to_string(), uri.describe()] {
            assert!(!shown.contains("s3cr3t"), "{shown}");
        }
        assert_eq!(
            uri.to_string(),
            "pkcs11:token=t;object=k?pin-value=***&module-path=/m.so"
        );
        // Nor in an error about the same URI.
        let err = Pkcs11Uri::parse("pkcs11:token=t?pin-value=s3cr3t").unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        for (uri, expect) in [
            ("token=t;object=k", "does not begin with"),
            ("pkcs11:token=t", "names no key"),
            ("pkcs11:object=k;object=j", "appears twice"),
            ("pkcs11:object=k;type=cert", "type=cert"),
            ("pkcs11:object=k;colour=blue", "unknown path attribute"),
            ("pkcs11:object=k?pin-source=https://x/pin", "only file:"),
            (
                "pkcs11:object=k?pin-source=file:pin.txt",
                "must be absolute",
            ),
            ("pkcs11:object=k?module-name=softhsm2", "module-name"),
            ("pkcs11:object=k?frobnicate=1", "unknown query attribute"),
            ("pkcs11:object=k%zz", "bad percent-encoding"),
            ("pkcs11:object=k;slot-id=x", "not a decimal"),
            ("pkcs11:object=k?pin-value=1&pin-source=file:/p", "not both"),
            ("pkcs11:object", "not NAME=VALUE"),
            ("pkcs11:object=%ff", "not UTF-8"),
        ] {
            let err = Pkcs11Uri::parse(uri).unwrap_err().to_string();
            assert!(err.contains(expect), "{uri}: {err}");
        }
    }
}
