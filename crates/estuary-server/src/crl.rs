//! The CRL (RFC 5280 §5): signed by the CA, regenerated whenever a certificate is revoked
//! (the store's revocation counter changes, also when `estuary certs revoke` ran in another
//! process or on another node) and when half of its validity has passed, so that `nextUpdate`
//! is never reached.
//!
//! Every CRL is recorded in the store ([`Store::publish_crl`]), which lets one node at a time
//! sign and keeps one sequence of CRL numbers; a node that finds a fresh CRL there serves that
//! one instead of signing its own, so every node sharing a PostgreSQL database serves the same
//! newest CRL within one poll.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use estuary_ca::crl::{build_crl, publishable, StoredRevocation};
use estuary_ca::CertificateAuthority;
use estuary_store::{CrlSigner, PublishedCrl, Store};

use crate::error::ServerError;

/// How often the store's revocation counter (and the newest recorded CRL) is looked at.
const POLL: Duration = Duration::from_secs(1);

/// How far ahead of this machine's clock a recorded CRL's thisUpdate may be.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

#[derive(Debug, Default)]
struct Current {
    der: Option<Bytes>,
    number: u64,
    this_update: i64,
    next_update: i64,
    version: i64,
}

/// Holds the current CRL and keeps it fresh.
#[derive(Debug)]
pub struct CrlPublisher {
    ca: CertificateAuthority,
    /// The CA key's identity in the store's `crls` table.
    issuer: String,
    store: Arc<dyn Store>,
    validity: Duration,
    current: RwLock<Current>,
}

/// The CA key's identity for [`Store::publish_crl`]: the SHA-256 of its public key, so a CRL
/// signed by a replaced CA key is never served.
fn issuer_id(ca: &CertificateAuthority) -> String {
    issuer_id_of_spki(ca.signer().public_key_der())
}

/// [`issuer_id`] of a public key (SubjectPublicKeyInfo DER): which CRLs in the store a key
/// signed (`store_owner`).
pub(crate) fn issuer_id_of_spki(spki_der: &[u8]) -> String {
    estuary_ca::issue::thumbprint_sha256(spki_der)
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl CrlPublisher {
    /// A publisher; call [`refresh`](Self::refresh) once before serving.
    pub fn new(ca: CertificateAuthority, store: Arc<dyn Store>, validity: Duration) -> Self {
        CrlPublisher {
            issuer: issuer_id(&ca),
            ca,
            store,
            validity,
            current: RwLock::new(Current::default()),
        }
    }

    /// Whether the current CRL is still before its nextUpdate.
    pub fn is_fresh(&self) -> bool {
        self.current
            .read()
            .ok()
            .is_some_and(|c| c.der.is_some() && unix(SystemTime::now()) < c.next_update)
    }

    /// The current CRL (DER).
    pub fn current(&self) -> Option<Bytes> {
        self.current.read().ok().and_then(|c| c.der.clone())
    }

    /// Whether a CRL read from the store is one this CA signed, with the number it was
    /// recorded under and a thisUpdate that is not ahead of this machine's clock: another node's
    /// clock running ahead, or a row that does not hold what it says, must not become what every
    /// node serves.
    /// Returns its thisUpdate and nextUpdate as the signed CRL says them (the row's columns are
    /// not trusted for them).
    fn check_recorded(&self, crl: &PublishedCrl) -> Result<(i64, i64), String> {
        use der::Decode;
        let parts =
            estuary_wire::signature::split_signed(&crl.der, "CRL").map_err(|e| e.to_string())?;
        let ca = &self.ca.certificate().tbs_certificate;
        estuary_wire::signature::verify(
            &ca.subject_public_key_info,
            &parts.algorithm,
            parts.tbs,
            parts.signature,
        )
        .map_err(|e| format!("its signature is not this CA's: {e}"))?;
        let list =
            x509_cert::crl::CertificateList::from_der(&crl.der).map_err(|e| e.to_string())?;
        let tbs = &list.tbs_cert_list;
        if tbs.issuer != ca.subject {
            return Err("its issuer is not this CA".into());
        }
        // RFC 5280 §5.2.3: the cRLNumber extension.
        let number = tbs
            .crl_extensions
            .iter()
            .flatten()
            .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_CRL_NUMBER)
            .and_then(|e| der::asn1::Uint::from_der(e.extn_value.as_bytes()).ok())
            .map(|n| {
                n.as_bytes()
                    .iter()
                    .fold(0u128, |acc, b| (acc << 8) | u128::from(*b))
            });
        if number != Some(u128::from(crl.number)) {
            return Err(format!(
                "it is recorded as number {} but says {number:?}",
                crl.number
            ));
        }
        let now = unix(SystemTime::now());
        let this_update = unix(tbs.this_update.to_system_time());
        if this_update > now + CLOCK_SKEW.as_secs() as i64 {
            return Err(
                "its thisUpdate is ahead of this machine's clock (a node's clock is wrong?)".into(),
            );
        }
        let next_update = tbs
            .next_update
            .map(|t| unix(t.to_system_time()))
            .ok_or("it has no nextUpdate")?;
        if next_update <= now {
            return Err("it is past its nextUpdate".into());
        }
        Ok((this_update, next_update))
    }

    /// Serves a newer CRL than the current one (from this node or another); `true` if it was.
    fn adopt(&self, crl: PublishedCrl) -> bool {
        let (this_update, next_update) = match self.check_recorded(&crl) {
            Ok(times) => times,
            Err(why) => {
                tracing::warn!(crl_number = crl.number, problem = %why, "not serving the CRL recorded in the store");
                return false;
            }
        };
        let Ok(mut c) = self.current.write() else {
            return false;
        };
        if c.der.is_some() && crl.number <= c.number {
            return false;
        }
        *c = Current {
            der: Some(Bytes::from(crl.der)),
            number: crl.number,
            this_update,
            next_update,
            version: crl.revocation_version,
        };
        true
    }

    /// Brings the served CRL up to date: takes a fresh one another node recorded, or signs one
    /// if revocations changed or half its validity has passed. `true` if the CRL changed.
    pub async fn refresh(&self) -> Result<bool, ServerError> {
        let version = self.store.revocation_version().await?;
        let now = unix(SystemTime::now());
        let half = (self.validity / 2).as_secs() as i64;
        let (due, serving) = match self.current.read() {
            Ok(c) => (
                c.der.is_none() || c.version < version || now >= c.this_update + half,
                c.number,
            ),
            Err(_) => (true, 0),
        };
        if !due {
            // Another node may still have signed a newer one (a revocation it saw first).
            return Ok(match self.store.newest_crl(&self.issuer, serving).await? {
                Some(newest) if newest.revocation_version >= version => self.adopt(newest),
                _ => false,
            });
        }
        let fresh_since = now - half;
        if let Some(newest) = self.store.newest_crl(&self.issuer, serving).await? {
            if newest.revocation_version >= version && newest.this_update >= fresh_since {
                return Ok(self.adopt(newest));
            }
        }
        let stored = self
            .store
            .revoked()
            .await?
            .into_iter()
            .map(|r| StoredRevocation {
                serial_hex: r.serial,
                revoked_at: SystemTime::UNIX_EPOCH
                    + Duration::from_secs(r.revoked_at.max(0) as u64),
                reason: r.reason,
            })
            .collect::<Vec<_>>();
        // One bad row (e.g. a removeFromCRL reason an older version accepted) must not stop
        // every later revocation from being published.
        let (entries, problems) = publishable(stored);
        for problem in &problems {
            tracing::warn!(problem = %problem, "CRL entry");
        }
        let revoked = entries.len();
        let ca = self.ca.clone();
        let validity = self.validity;
        // Runs under the store's CRL lock, with the next number of the one sequence; if it
        // fails the number is not used up.
        let sign: CrlSigner = Box::new(move |number| {
            let this_update = SystemTime::now();
            let next_update = this_update + validity;
            build_crl(&ca, &entries, number, this_update, next_update)
                .map(|der| (der, unix(this_update), unix(next_update)))
                .map_err(|e| e.to_string())
        });
        let published = self
            .store
            .publish_crl(&self.issuer, version, fresh_since, sign)
            .await?;
        let number = published.number;
        let changed = self.adopt(published);
        if changed {
            tracing::info!(crl_number = number, revoked, "CRL published");
        }
        Ok(changed)
    }

    /// Keeps refreshing until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            tokio::time::sleep(POLL).await;
            if let Err(e) = self.refresh().await {
                tracing::error!(error = %e, "CRL refresh failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use estuary_ca::bootstrap::load_or_create_ca;
    use estuary_ca::KeyChoice;
    use estuary_store::{AuditRecord, CertificateRecord, SqliteStore};

    use super::*;

    fn record(serial: &str) -> CertificateRecord {
        CertificateRecord {
            serial: serial.into(),
            subject: format!("CN={serial}"),
            sans: vec![],
            not_before: 0,
            not_after: i64::MAX / 2,
            sha256_thumbprint: format!("{serial}AA").to_ascii_uppercase(),
            sha1_thumbprint: format!("{serial}BB").to_ascii_uppercase(),
            profile: "device".into(),
            label: String::new(),
            origin_label: String::new(),
            requester: "basic:test".into(),
            key_type: "p256".into(),
            issued_at: 1,
            revoked_at: None,
            der: vec![0x30, 0x00],
        }
    }

    fn audit() -> AuditRecord {
        AuditRecord {
            time: 10,
            request_id: "t".into(),
            peer: "-".into(),
            requester: "test".into(),
            auth_method: "cli".into(),
            label: String::new(),
            operation: "revoke".into(),
            outcome: estuary_store::Outcome::Revoked,
            status: 0,
            serial: None,
            reason: None,
        }
    }

    async fn setup(validity: Duration) -> (tempfile::TempDir, Arc<SqliteStore>, CrlPublisher) {
        let tmp = tempfile::tempdir().unwrap();
        let (ca, _) = load_or_create_ca(&tmp.path().join("data"), KeyChoice::P256).unwrap();
        let store = Arc::new(SqliteStore::open(&tmp.path().join("estuary.db")).unwrap());
        for serial in ["0a", "0b"] {
            store
                .record_issued(record(serial), audit(), None)
                .await
                .unwrap();
        }
        let publisher = CrlPublisher::new(ca, store.clone(), validity);
        (tmp, store, publisher)
    }

    /// Regression: a stored removeFromCRL (accepted by older versions) made every CRL build
    /// fail from then on, so later revocations were never published.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_stored_reason_does_not_stop_publication() {
        let (_tmp, store, publisher) = setup(Duration::from_secs(3600)).await;
        store
            .revoke("0a", Some("removeFromCRL".into()), audit())
            .await
            .unwrap();
        assert!(publisher.refresh().await.unwrap());
        store
            .revoke("0b", Some("keyCompromise".into()), audit())
            .await
            .unwrap();
        assert!(publisher.refresh().await.unwrap());
        let der = publisher.current().unwrap();
        let crl = <x509_cert::crl::CertificateList as der::Decode>::from_der(&der).unwrap();
        let revoked = crl.tbs_cert_list.revoked_certificates.unwrap();
        let serials: Vec<&[u8]> = revoked.iter().map(|r| r.serial_number.as_bytes()).collect();
        assert_eq!(serials, vec![&[0x0a][..], &[0x0b][..]]);
        assert!(revoked[0].crl_entry_extensions.is_none());
        assert!(revoked[1].crl_entry_extensions.is_some());
        assert!(publisher.is_fresh());
    }

    /// Regression: every failed attempt (one a second) took a CRL number from the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_attempts_do_not_burn_crl_numbers() {
        // A zero validity makes signing refuse (nextUpdate must be after thisUpdate).
        let (_tmp, store, failing) = setup(Duration::ZERO).await;
        for _ in 0..3 {
            assert!(failing.refresh().await.is_err());
        }
        assert!(!failing.is_fresh());
        let publisher =
            CrlPublisher::new(failing.ca.clone(), store.clone(), Duration::from_secs(3600));
        assert!(publisher.refresh().await.unwrap());
        let newest = store
            .newest_crl(&publisher.issuer, 0)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(newest.number, 1);
    }

    /// Two publishers on one store (two nodes): after a revocation only one signs, and both
    /// serve the same CRL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_serve_one_crl_sequence() {
        let (_tmp, store, first) = setup(Duration::from_secs(3600)).await;
        let second = CrlPublisher::new(first.ca.clone(), store.clone(), Duration::from_secs(3600));
        assert!(first.refresh().await.unwrap());
        assert!(second.refresh().await.unwrap());
        assert_eq!(first.current(), second.current());
        store.revoke("0a", None, audit()).await.unwrap();
        let (a, b) = tokio::join!(first.refresh(), second.refresh());
        assert!(a.unwrap() && b.unwrap());
        assert_eq!(first.current(), second.current());
        let newest = store.newest_crl(&first.issuer, 0).await.unwrap().unwrap();
        assert_eq!(newest.number, 2, "one CRL per revocation, not one per node");
        assert!(!first.refresh().await.unwrap());
    }
}
