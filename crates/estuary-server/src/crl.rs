//! The CRL (RFC 5280 §5): signed by the CA, regenerated whenever a certificate is revoked
//! (the store's revocation counter changes, also when `estuary certs revoke` ran in another
//! process) and when half of its validity has passed, so that `nextUpdate` is never reached.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use estuary_ca::crl::{build_crl, publishable, StoredRevocation};
use estuary_ca::CertificateAuthority;
use estuary_store::Store;

use crate::error::ServerError;

/// How often the store's revocation counter is looked at.
const POLL: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct Current {
    der: Option<Bytes>,
    this_update: Option<SystemTime>,
    version: i64,
}

/// Holds the current CRL and keeps it fresh.
#[derive(Debug)]
pub struct CrlPublisher {
    ca: CertificateAuthority,
    store: Arc<dyn Store>,
    validity: Duration,
    current: RwLock<Current>,
    /// A CRL number taken from the store for a CRL that then failed to sign: used by the next
    /// attempt, so that repeated failures do not burn a number each (RFC 5280 §5.2.3 only asks
    /// for increasing numbers; one never published may be used later).
    unused_number: Mutex<Option<u64>>,
}

impl CrlPublisher {
    /// A publisher; call [`refresh`](Self::refresh) once before serving.
    pub fn new(ca: CertificateAuthority, store: Arc<dyn Store>, validity: Duration) -> Self {
        CrlPublisher {
            ca,
            store,
            validity,
            current: RwLock::new(Current::default()),
            unused_number: Mutex::new(None),
        }
    }

    /// Whether the current CRL is still before its nextUpdate.
    pub fn is_fresh(&self) -> bool {
        self.current
            .read()
            .ok()
            .and_then(|c| c.this_update)
            .is_some_and(|t| SystemTime::now() < t + self.validity)
    }

    /// The current CRL (DER).
    pub fn current(&self) -> Option<Bytes> {
        self.current.read().ok().and_then(|c| c.der.clone())
    }

    /// Re-signs the CRL if revocations changed or half its validity has passed.
    pub async fn refresh(&self) -> Result<bool, ServerError> {
        let version = self.store.revocation_version().await?;
        let now = SystemTime::now();
        let due = match self.current.read() {
            Ok(c) => {
                c.der.is_none()
                    || c.version != version
                    || c.this_update.is_none_or(|t| now >= t + self.validity / 2)
            }
            Err(_) => true,
        };
        if !due {
            return Ok(false);
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
        let number = self.take_number().await?;
        let signed = if self.ca.signer().may_block() {
            // A token (or RSA) signature must not hold an async worker thread.
            let (ca, validity) = (self.ca.clone(), self.validity);
            let entry_count = entries.len();
            tokio::task::spawn_blocking(move || {
                build_crl(&ca, &entries, number, now, now + validity).map(|der| (der, entry_count))
            })
            .await
            .unwrap_or_else(|e| {
                Err(estuary_ca::CaError::Signing(format!(
                    "CRL signing task: {e}"
                )))
            })
        } else {
            build_crl(&self.ca, &entries, number, now, now + self.validity)
                .map(|der| (der, entries.len()))
        };
        let (der, revoked) = match signed {
            Ok(signed) => signed,
            Err(e) => {
                // Not published: keep the number for the next attempt.
                if let Ok(mut unused) = self.unused_number.lock() {
                    *unused = Some(number);
                }
                return Err(e.into());
            }
        };
        if let Ok(mut c) = self.current.write() {
            *c = Current {
                der: Some(Bytes::from(der)),
                this_update: Some(now),
                version,
            };
        }
        tracing::info!(crl_number = number, revoked, "CRL signed");
        Ok(true)
    }

    /// The number for the CRL about to be signed: one an earlier failed attempt took, else the
    /// store's next one.
    async fn take_number(&self) -> Result<u64, ServerError> {
        if let Some(n) = self.unused_number.lock().ok().and_then(|mut u| u.take()) {
            return Ok(n);
        }
        Ok(self.store.next_crl_number().await?)
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
        let (_tmp, store, publisher) = setup(Duration::ZERO).await;
        for _ in 0..3 {
            assert!(publisher.refresh().await.is_err());
        }
        // One number is held for the next attempt; the store handed out only that one.
        assert_eq!(store.next_crl_number().await.unwrap(), 2);
    }
}
