//! Reading X.509 names (RFC 5280 §4.1.2.4): the text of a directory string, and the CNs.

use der::asn1::{Any, Ia5StringRef, PrintableStringRef, TeletexStringRef, Utf8StringRef};
use x509_cert::name::Name;

/// The text of an attribute value that is a UTF8String, PrintableString, IA5String or
/// TeletexString; `None` for any other type.
pub fn directory_string(value: &Any) -> Option<String> {
    value
        .decode_as::<Utf8StringRef<'_>>()
        .map(|s| s.as_str().to_string())
        .or_else(|_| {
            value
                .decode_as::<PrintableStringRef<'_>>()
                .map(|s| s.as_str().to_string())
        })
        .or_else(|_| {
            value
                .decode_as::<Ia5StringRef<'_>>()
                .map(|s| s.as_str().to_string())
        })
        .or_else(|_| {
            value
                .decode_as::<TeletexStringRef<'_>>()
                .map(|s| s.as_str().to_string())
        })
        .ok()
}

/// Every CN of a name, as text, in order; `None` if one of them is not a text string
/// [`directory_string`] reads (rules about the CN must see all of them, not just the first).
pub fn common_names(name: &Name) -> Option<Vec<String>> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter(|atv| atv.oid == const_oid::db::rfc4519::COMMON_NAME)
        .map(|atv| directory_string(&atv.value))
        .collect()
}

/// The RFC 4514 string of a name, exactly as `x509_cert`'s `Display` writes it (RDNs last
/// first, `+` inside an RDN, the shortest registered attribute name upper-cased, RFC 4514
/// §2.4 escapes, `OID=#hex` for other values), without its walk through the whole OID
/// database for every attribute: the names are looked up once per attribute type and kept.
pub fn rfc4514(name: &Name) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(64);
    for (i, rdn) in name.0.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.0.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            let text = match der::Tagged::tag(&atv.value) {
                der::Tag::PrintableString
                | der::Tag::Utf8String
                | der::Tag::Ia5String
                | der::Tag::TeletexString => directory_string(&atv.value),
                _ => None,
            };
            match (attribute_name(&atv.oid), text) {
                (Some(key), Some(value)) => {
                    out.push_str(&key);
                    out.push('=');
                    let mut chars = value.char_indices().peekable();
                    while let Some((k, c)) = chars.next() {
                        match c {
                            '#' if k == 0 => out.push_str("\\#"),
                            ' ' if k == 0 || chars.peek().is_none() => out.push_str("\\ "),
                            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                                out.push('\\');
                                out.push(c);
                            }
                            '\x00'..='\x1f' | '\x7f' => {
                                let _ = write!(out, "\\{:02x}", c as u8);
                            }
                            _ => out.push(c),
                        }
                    }
                }
                _ => {
                    let _ = write!(out, "{}=#", atv.oid);
                    if let Ok(der) = der::Encode::to_der(&atv.value) {
                        out.push_str(&hex_lower(&der));
                    }
                }
            }
        }
    }
    out
}

/// Whether any attribute value of `name` that is text holds a control character (a NUL, a
/// line end): no real name does, and a NUL makes one parser read another name than the next.
pub fn has_control_character(name: &Name) -> bool {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .filter_map(|atv| directory_string(&atv.value))
        .any(|text| text.chars().any(|c| c.is_ascii_control()))
}

fn hex_lower(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// The upper-cased shortest registered name of an attribute type (`CN`, `O`,
/// `SERIALNUMBER`), as `x509_cert` picks it; looked up once per type.
fn attribute_name(oid: &const_oid::ObjectIdentifier) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};
    static NAMES: OnceLock<RwLock<HashMap<const_oid::ObjectIdentifier, Option<String>>>> =
        OnceLock::new();
    let names = NAMES.get_or_init(RwLock::default);
    if let Some(known) = names.read().ok().and_then(|m| m.get(oid).cloned()) {
        return known;
    }
    let shortest = const_oid::db::DB
        .find_names_for_oid(*oid)
        .min_by_key(|n| n.len())
        .map(str::to_ascii_uppercase);
    if let Ok(mut m) = names.write() {
        // Bounded: a peer may send any OIDs; only the first 1,000 types are kept.
        if m.len() < 1000 {
            m.insert(*oid, shortest.clone());
        }
    }
    shortest
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn rfc4514_is_what_x509_cert_writes() {
        for text in [
            "CN=dev1",
            "CN=dev1,O=Contoso,C=US",
            "CN=a+UID=b,OU=x\\,y,O=\\#z",
            "CN=#1e0400610062,O=x",
            "CN=\\ lead and trail\\ ,O=q\\\"uote",
            "SERIALNUMBER=123,CN=x",
            "CN=myiotedgedevice",
            "DC=example,DC=com,CN=dev;1",
        ] {
            let name = Name::from_str(text).expect(text);
            assert_eq!(rfc4514(&name), name.to_string(), "{text}");
        }
    }
}
