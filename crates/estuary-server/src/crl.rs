//! The CRL (RFC 5280 §5): signed by the CA, regenerated whenever a certificate is revoked
//! (the store's revocation counter changes, also when `estuary certs revoke` ran in another
//! process) and when half of its validity has passed, so that `nextUpdate` is never reached.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use estuary_ca::crl::{build_crl, RevokedEntry};
use estuary_ca::CertificateAuthority;
use estuary_store::Store;

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
}

impl CrlPublisher {
    /// A publisher; call [`refresh`](Self::refresh) once before serving.
    pub fn new(ca: CertificateAuthority, store: Arc<dyn Store>, validity: Duration) -> Self {
        CrlPublisher {
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
            .and_then(|c| c.this_update)
            .is_some_and(|t| SystemTime::now() < t + self.validity)
    }

    /// The current CRL (DER).
    pub fn current(&self) -> Option<Bytes> {
        self.current.read().ok().and_then(|c| c.der.clone())
    }

    /// Re-signs the CRL if revocations changed or half its validity has passed.
    pub async fn refresh(&self) -> Result<bool, String> {
        let version = self
            .store
            .revocation_version()
            .await
            .map_err(|e| e.to_string())?;
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
        let entries = self
            .store
            .revoked()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|r| RevokedEntry {
                serial_hex: r.serial,
                revoked_at: SystemTime::UNIX_EPOCH
                    + Duration::from_secs(r.revoked_at.max(0) as u64),
                reason: r.reason.and_then(|s| s.parse().ok()),
            })
            .collect::<Vec<_>>();
        let number = self
            .store
            .next_crl_number()
            .await
            .map_err(|e| e.to_string())?;
        let der = build_crl(&self.ca, &entries, number, now, now + self.validity)
            .map_err(|e| e.to_string())?;
        if let Ok(mut c) = self.current.write() {
            *c = Current {
                der: Some(Bytes::from(der)),
                this_update: Some(now),
                version,
            };
        }
        tracing::info!(crl_number = number, revoked = entries.len(), "CRL signed");
        Ok(true)
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
