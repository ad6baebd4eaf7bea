//! `/csrattrs` bodies: CsrAttrs ::= SEQUENCE SIZE (0..MAX) OF AttrOrOID (RFC 7030 §4.5.2).

use const_oid::ObjectIdentifier;
use der::Encode;

/// Encodes a list of OIDs as CsrAttrs (DER).
pub fn encode_oids(oids: &[ObjectIdentifier]) -> Result<Vec<u8>, crate::WireError> {
    oids.to_vec()
        .to_der()
        .map_err(|e| crate::WireError::malformed("csrattrs", e))
}

/// CsrAttrs ::= SEQUENCE OF AttrOrOID (RFC 7030 §4.5.2), one line each.
pub fn describe(der: &[u8]) -> Vec<String> {
    use der::{Decode, Reader, SliceReader};
    let Ok(seq) = der::asn1::AnyRef::from_der(der) else {
        return vec!["<malformed csrattrs>".into()];
    };
    let Ok(mut reader) = SliceReader::new(seq.value()) else {
        return vec![];
    };
    let mut lines = Vec::new();
    while !reader.is_finished() {
        let Ok(item) = reader.decode::<der::asn1::AnyRef<'_>>() else {
            lines.push("<malformed element>".into());
            break;
        };
        if let Ok(oid) = item.decode_as::<ObjectIdentifier>() {
            let name = const_oid::db::DB.by_oid(&oid).unwrap_or("");
            lines.push(format!("OID {oid} {name}"));
        } else if let Ok(attr) = item.decode_as::<x509_cert::attr::Attribute>() {
            let name = const_oid::db::DB.by_oid(&attr.oid).unwrap_or("");
            lines.push(format!(
                "attribute {} {name} ({} value(s))",
                attr.oid,
                attr.values.len()
            ));
        } else {
            lines.push("<unknown element>".into());
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_describes_oids() {
        let oids = [
            ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.7"),
            ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
        ];
        let der = encode_oids(&oids).unwrap();
        let lines = describe(&der);
        assert_eq!(lines.len(), 2);
        assert!(lines[0].contains("1.2.840.113549.1.9.7"), "{lines:?}");
        assert!(lines[1].contains("ecdsa-with-SHA256"), "{lines:?}");
        assert_eq!(
            describe(b"garbage"),
            vec!["<malformed csrattrs>".to_string()]
        );
    }
}
