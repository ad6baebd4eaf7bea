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
