//! The upstream CA's CRL, verified against the issuing CA, and a cache that never goes back
//! to an older one.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use der::Decode;
use estuary_auth::BootstrapCrl;
use x509_cert::crl::CertificateList;
use x509_cert::Certificate;

use super::UpstreamError;

/// The upstream CA's CRL (RFC 5280 §5), its signature checked against the issuing CA.
#[derive(Debug)]
pub struct UpstreamCrl {
    inner: BootstrapCrl,
    /// The CRL as received (DER), to be served again to the layer below.
    der: Vec<u8>,
    /// The issuing CA's subject.
    pub issuer: String,
}

impl UpstreamCrl {
    /// Parses a CRL (DER, or PEM `X509 CRL`) and verifies it against the CA among `cacerts`
    /// (the upstream's `/cacerts` chain) whose subject is the CRL's issuer and that is a CA.
    pub fn parse(bytes: &[u8], cacerts: &[Vec<u8>]) -> Result<Self, UpstreamError> {
        let der = match std::str::from_utf8(bytes)
            .ok()
            .filter(|t| t.contains("-----BEGIN"))
        {
            Some(text) => pem::parse(text)
                .map_err(|e| UpstreamError::Crl(e.to_string()))?
                .into_contents(),
            None => bytes.to_vec(),
        };
        let list = CertificateList::from_der(&der)
            .map_err(|e| UpstreamError::Crl(format!("not a DER CRL: {e}")))?;
        let issuer = &list.tbs_cert_list.issuer;
        let mut tried = Vec::new();
        for ca_der in cacerts {
            let Ok(ca) = Certificate::from_der(ca_der) else {
                continue;
            };
            if &ca.tbs_certificate.subject != issuer || !is_ca(&ca) {
                continue;
            }
            let name = ca.tbs_certificate.subject.to_string();
            match BootstrapCrl::parse(&format!("upstream CA {name}"), &der, ca_der) {
                Ok(inner) => {
                    return Ok(UpstreamCrl {
                        inner,
                        der,
                        issuer: name,
                    })
                }
                Err(e) => tried.push(e),
            }
        }
        Err(UpstreamError::Crl(if tried.is_empty() {
            format!("issued by {issuer}, which is no CA certificate of the upstream's /cacerts")
        } else {
            tried
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ")
        }))
    }

    /// The CRL (DER).
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// Whether the CRL lists the certificate with this serial number, in hex (`0a1b...`,
    /// upper or lower case, colons allowed, leading zeros ignored). An unreadable serial
    /// counts as revoked.
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        match serial_der(serial_hex) {
            Some(serial) => self.inner.is_revoked(&serial),
            None => true,
        }
    }

    /// thisUpdate.
    pub fn this_update(&self) -> SystemTime {
        self.inner.this_update
    }

    /// nextUpdate, if the CRL has one.
    pub fn next_update(&self) -> Option<SystemTime> {
        self.inner.next_update
    }

    /// How many certificates it lists.
    pub fn entries(&self) -> usize {
        self.inner.entries
    }

    /// cRLNumber, big-endian without leading zeros, if present.
    pub fn number(&self) -> Option<&[u8]> {
        self.inner.number.as_deref()
    }

    /// Whether this CRL was issued before `other`: by cRLNumber when both have one, else by
    /// thisUpdate.
    pub fn is_older_than(&self, other: &UpstreamCrl) -> bool {
        self.inner.is_older_than(&other.inner)
    }

    /// Whether it is past its nextUpdate at `now` (a CRL without one never is).
    pub fn is_stale(&self, now: SystemTime) -> bool {
        self.inner.next_update.is_some_and(|n| n <= now)
    }
}

fn is_ca(cert: &Certificate) -> bool {
    cert.tbs_certificate.extensions.iter().flatten().any(|e| {
        e.extn_id == const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS
            && x509_cert::ext::pkix::BasicConstraints::from_der(e.extn_value.as_bytes())
                .is_ok_and(|b| b.ca)
    })
}

/// The content bytes of the DER INTEGER of a positive serial given in hex: leading zeros
/// dropped, one zero byte put back when the high bit is set.
fn serial_der(hex_text: &str) -> Option<Vec<u8>> {
    let digits: String = hex_text
        .trim()
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .trim_start_matches("0x")
        .to_string();
    if digits.is_empty() || digits.len() > 80 {
        return None;
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    let bytes = hex::decode(padded).ok()?;
    let first = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    let mut serial = bytes[first..].to_vec();
    if serial.first().is_none_or(|b| b & 0x80 != 0) {
        serial.insert(0, 0);
    }
    Some(serial)
}

/// The upstream CRL in force: replaced only by one at least as new (a replayed older CRL
/// would un-revoke certificates).
#[derive(Debug, Default)]
pub struct UpstreamCrlCache {
    current: Mutex<Option<Arc<UpstreamCrl>>>,
}

impl UpstreamCrlCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `new` in force unless the CRL in force is newer (a higher cRLNumber, or a later
    /// thisUpdate when either lacks a number) or the same. Returns whether it was put in force.
    pub fn update(&self, new: UpstreamCrl) -> bool {
        let Ok(mut current) = self.current.lock() else {
            return false;
        };
        let replace = match current.as_deref() {
            None => true,
            // Numbers and dates compare only between CRLs of one issuer: a CRL of another CA
            // (the upstream's issuing CA changed) replaces the old one.
            Some(old) if old.issuer != new.issuer => true,
            Some(old) => {
                old.is_older_than(&new)
                    || (!new.is_older_than(old) && new.this_update() > old.this_update())
            }
        };
        if replace {
            *current = Some(Arc::new(new));
        } else {
            tracing::debug!("the upstream CRL fetched is not newer than the one in force: kept the one in force");
        }
        replace
    }

    /// The CRL in force.
    pub fn current(&self) -> Option<Arc<UpstreamCrl>> {
        self.current.lock().ok().and_then(|c| c.clone())
    }

    /// Whether the CRL in force lists this serial (hex). Without a CRL, nothing is listed:
    /// check [`UpstreamCrlCache::is_stale`] to decide whether to trust that.
    pub fn is_revoked(&self, serial_hex: &str) -> bool {
        self.current().is_some_and(|c| c.is_revoked(serial_hex))
    }

    /// Whether there is no CRL in force, or it is past its nextUpdate at `now`.
    pub fn is_stale(&self, now: SystemTime) -> bool {
        self.current().is_none_or(|c| c.is_stale(now))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, CertificateRevocationListParams, IsCa, Issuer,
        KeyPair, RevokedCertParams, SerialNumber,
    };
    use std::time::Duration;
    use time::OffsetDateTime;

    struct Ca {
        der: Vec<u8>,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca(name: &str) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    fn crl(ca: &Ca, number: u8, age: Duration, revoked: &[&[u8]]) -> Vec<u8> {
        CertificateRevocationListParams {
            this_update: OffsetDateTime::now_utc() - age,
            next_update: OffsetDateTime::now_utc() + Duration::from_secs(3600) - age,
            crl_number: SerialNumber::from_slice(&[number]),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: OffsetDateTime::now_utc() - Duration::from_secs(60),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(&ca.issuer)
        .unwrap()
        .der()
        .to_vec()
    }

    #[test]
    fn serials_are_normalised() {
        assert_eq!(serial_der("0a1B"), Some(vec![0x0a, 0x1b]));
        assert_eq!(serial_der("00:0a:1b"), Some(vec![0x0a, 0x1b]));
        assert_eq!(serial_der("ff"), Some(vec![0, 0xff]));
        assert_eq!(serial_der("00ff"), Some(vec![0, 0xff]));
        assert_eq!(serial_der("abc"), Some(vec![0x0a, 0xbc]));
        assert_eq!(serial_der("xyz"), None);
        assert_eq!(serial_der(""), None);
    }

    #[test]
    fn verified_against_the_issuing_ca_and_looked_up() {
        let upstream = ca("Upstream CA");
        let other = ca("Other CA");
        let der = crl(
            &upstream,
            1,
            Duration::ZERO,
            &[&[0x0a, 0x1b], &[0x00, 0xff]],
        );
        // The issuing CA is found in the chain, wherever it is.
        let parsed = UpstreamCrl::parse(&der, &[other.der.clone(), upstream.der.clone()]).unwrap();
        assert_eq!(parsed.entries(), 2);
        assert_eq!(parsed.number(), Some(&[1u8][..]));
        assert!(parsed.is_revoked("0a1b") && parsed.is_revoked("0A:1B"));
        assert!(parsed.is_revoked("ff") && parsed.is_revoked("00FF"));
        assert!(!parsed.is_revoked("0a1c"));
        assert!(parsed.is_revoked("not hex"));
        assert!(!parsed.is_stale(SystemTime::now()));
        assert!(parsed.is_stale(SystemTime::now() + Duration::from_secs(7200)));
        assert!(parsed.next_update().is_some() && parsed.this_update() <= SystemTime::now());
        // PEM too.
        let pem_text = pem::encode(&pem::Pem::new("X509 CRL", der.clone()));
        assert!(
            UpstreamCrl::parse(pem_text.as_bytes(), std::slice::from_ref(&upstream.der)).is_ok()
        );
        // Not from the upstream CA: refused.
        let e = UpstreamCrl::parse(&der, std::slice::from_ref(&other.der)).unwrap_err();
        assert!(e.to_string().contains("no CA certificate"), "{e}");
        // Same subject, another key: the signature does not verify.
        let impostor = ca("Upstream CA");
        let e = UpstreamCrl::parse(&der, &[impostor.der]).unwrap_err();
        assert!(e.to_string().contains("signature"), "{e}");
        assert!(UpstreamCrl::parse(b"garbage", &[upstream.der]).is_err());
    }

    #[test]
    fn the_cache_never_goes_back() {
        let upstream = ca("Upstream CA");
        let chain = [upstream.der.clone()];
        let cache = UpstreamCrlCache::new();
        assert!(cache.is_stale(SystemTime::now()));
        assert!(!cache.is_revoked("01"));
        let second =
            UpstreamCrl::parse(&crl(&upstream, 2, Duration::ZERO, &[&[1]]), &chain).unwrap();
        assert!(cache.update(second));
        assert!(cache.is_revoked("01") && !cache.is_stale(SystemTime::now()));
        // An older one (lower number, even with a later thisUpdate) is not put in force.
        let first = UpstreamCrl::parse(&crl(&upstream, 1, Duration::ZERO, &[]), &chain).unwrap();
        assert!(!cache.update(first));
        assert!(cache.is_revoked("01"));
        assert_eq!(cache.current().unwrap().number(), Some(&[2u8][..]));
        // The same number again with an earlier thisUpdate: kept.
        let replay =
            UpstreamCrl::parse(&crl(&upstream, 2, Duration::from_secs(60), &[]), &chain).unwrap();
        assert!(!cache.update(replay));
        // A newer one is.
        let third = UpstreamCrl::parse(&crl(&upstream, 3, Duration::ZERO, &[]), &chain).unwrap();
        assert!(cache.update(third));
        assert!(!cache.is_revoked("01"));
        assert!(cache.is_stale(SystemTime::now() + Duration::from_secs(7200)));
    }
}
