//! The agent's state directory.
//!
//! ```text
//! STATE_DIR/
//!   device-id.cert.pem        current certificate (leaf first)      0644
//!   device-id.key.pem         its private key                       0600
//!   device-id.key.pem.new     a rotated key waiting for its certificate (during a renewal)
//!   device-id.cert.pem.new    a new certificate about to replace the current one
//!   device-id.pending.key.pem the key of a request waiting for manual approval (0600)
//!   device-id.pending.csr.pem that request's CSR, byte for byte as sent (RFC 7030 §4.2.3)
//!   est-id.*, aziot-edged-ca.*   the same for the other certificates
//!   state.json                last attempt, last error, next retry, renewal count per certificate
//! ```
//!
//! A replacement is staged as `.new` files and moved into place key first, certificate last;
//! at start an interrupted replacement is completed (both staged) or discarded (key only), so a
//! working certificate is never removed before its replacement is stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use estuary_ca::FileKeySigner;
use serde::{Deserialize, Serialize};

use super::config::CertId;
use crate::{files, ClientError};

/// Per-certificate bookkeeping, kept in `state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CertStatus {
    /// UNIX time of the last attempt.
    pub last_attempt: Option<i64>,
    /// UNIX time of the last success.
    pub last_success: Option<i64>,
    /// The last error, cleared by a success.
    pub last_error: Option<String>,
    /// UNIX time before which no new attempt is made (after a failure).
    pub next_retry: Option<i64>,
    /// Certificates obtained so far.
    pub issued_count: u64,
    /// Whether the last EST identity request fell back to the bootstrap certificate.
    pub used_bootstrap: bool,
    /// A digest of what the last attempt used (URL, trust anchors, credentials, subject): when
    /// the configuration changes, a stored back-off no longer applies.
    #[serde(default)]
    pub config_digest: Option<String>,
    /// The server's id of a request waiting for manual approval.
    #[serde(default)]
    pub pending_request: Option<String>,
}

/// The contents of `state.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusFile {
    /// By cert id.
    pub certs: BTreeMap<String, CertStatus>,
}

/// A certificate and key currently on disk.
#[derive(Debug)]
pub struct Current {
    /// Certificate chain, leaf first.
    pub chain: Vec<Vec<u8>>,
    /// notBefore of the leaf.
    pub not_before: SystemTime,
    /// notAfter of the leaf.
    pub not_after: SystemTime,
}

impl Current {
    /// Whether the certificate is valid at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// notAfter - notBefore.
    pub fn lifetime(&self) -> std::time::Duration {
        self.not_after
            .duration_since(self.not_before)
            .unwrap_or_default()
    }
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens (creating, mode 0700) the directory. An existing one must belong to this user and
    /// not be writable by group or others: whoever can write there can plant a key.
    pub fn open(root: &Path) -> Result<Self, ClientError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .map_err(|e| ClientError::io(root, e).context("state directory"))?;
        let meta = std::fs::metadata(root)
            .map_err(|e| ClientError::io(root, e).context("state directory"))?;
        files::check_owned_and_private(&meta).map_err(|source| ClientError::UnsafeStateDir {
            path: root.to_path_buf(),
            source,
        })?;
        Ok(StateDir {
            root: root.to_path_buf(),
        })
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<id>.cert.pem`.
    pub fn cert_path(&self, id: CertId) -> PathBuf {
        self.root.join(format!("{id}.cert.pem"))
    }

    /// `<id>.key.pem`.
    pub fn key_path(&self, id: CertId) -> PathBuf {
        self.root.join(format!("{id}.key.pem"))
    }

    fn staged_key(&self, id: CertId) -> PathBuf {
        files::with_suffix(&self.key_path(id), ".new")
    }

    fn staged_cert(&self, id: CertId) -> PathBuf {
        files::with_suffix(&self.cert_path(id), ".new")
    }

    /// Completes or discards a replacement interrupted by a crash.
    pub fn recover(&self, id: CertId) -> Result<(), ClientError> {
        let (staged_key, staged_cert) = (self.staged_key(id), self.staged_cert(id));
        if staged_cert.exists() {
            if staged_key.exists() {
                rename(&staged_key, &self.key_path(id))?;
            }
            rename(&staged_cert, &self.cert_path(id))?;
        } else if staged_key.exists() {
            std::fs::remove_file(&staged_key).map_err(|e| ClientError::io(&staged_key, e))?;
        }
        Ok(())
    }

    /// The current certificate, if its file exists, parses, and matches the key file.
    pub fn load(&self, id: CertId) -> Result<Option<Current>, ClientError> {
        let (cert_path, key_path) = (self.cert_path(id), self.key_path(id));
        if !cert_path.exists() || !key_path.exists() {
            return Ok(None);
        }
        let chain = files::read_certificates(&cert_path)?;
        let key = self.read_key(id)?;
        let Some(leaf) = chain.first() else {
            return Ok(None);
        };
        if !files::key_matches(leaf, &key) {
            return Err(ClientError::Config(format!(
                "{} does not belong to {}",
                key_path.display(),
                cert_path.display()
            )));
        }
        let summary = files::summarize(leaf)?;
        Ok(Some(Current {
            chain,
            not_before: summary.not_before,
            not_after: summary.not_after,
        }))
    }

    /// The current private key.
    pub fn read_key(&self, id: CertId) -> Result<FileKeySigner, ClientError> {
        files::read_key(&self.key_path(id))
    }

    /// Stages a new key beside the current one (`<id>.key.pem.new`, 0600).
    pub fn stage_key(&self, id: CertId, key: &FileKeySigner) -> Result<(), ClientError> {
        files::write_key(&self.staged_key(id), key)
    }

    /// Stores a new certificate; if a key was staged, it moves into place first.
    pub fn commit(&self, id: CertId, chain: &[Vec<u8>]) -> Result<(), ClientError> {
        files::write_certificates(&self.staged_cert(id), chain)?;
        self.recover(id)
    }

    fn pending_key(&self, id: CertId) -> PathBuf {
        self.root.join(format!("{id}.pending.key.pem"))
    }

    fn pending_csr(&self, id: CertId) -> PathBuf {
        self.root.join(format!("{id}.pending.csr.pem"))
    }

    /// The key and exact CSR of a request waiting for manual approval, if both are stored and
    /// belong together (anything else is removed).
    pub fn load_pending(&self, id: CertId) -> Option<(FileKeySigner, Vec<u8>)> {
        let (key_path, csr_path) = (self.pending_key(id), self.pending_csr(id));
        if !files::is_present(&key_path) && !files::is_present(&csr_path) {
            return None;
        }
        // Only files this agent wrote itself (regular, ours, not writable by others, small).
        let loaded = files::read_own_key(&key_path)
            .and_then(|k| files::read_own_csr(&csr_path).map(|c| (k, c)))
            .map_err(|e| e.to_string())
            .and_then(|(k, c)| {
                if crate::csr::csr_is_for_key(&c, &k) {
                    Ok((k, c))
                } else {
                    Err(format!(
                        "{} is not for {}",
                        csr_path.display(),
                        key_path.display()
                    ))
                }
            });
        match loaded {
            Ok(pair) => Some(pair),
            Err(e) => {
                tracing::warn!(cert = %id, error = %e, "discarding an unusable pending request");
                self.discard_pending(id);
                None
            }
        }
    }

    /// Keeps the key and the exact CSR of a request the server holds for approval (key first).
    pub fn save_pending(
        &self,
        id: CertId,
        key: &FileKeySigner,
        csr: &[u8],
    ) -> Result<(), ClientError> {
        files::write_key(&self.pending_key(id), key)?;
        files::write_csr(&self.pending_csr(id), csr)
    }

    /// Forgets a pending request (answered, rejected, or no longer what the config asks for).
    pub fn discard_pending(&self, id: CertId) {
        let _ = std::fs::remove_file(self.pending_csr(id));
        let _ = std::fs::remove_file(self.pending_key(id));
    }

    /// Removes a staged key after a failed attempt.
    pub fn discard_staged(&self, id: CertId) {
        let _ = std::fs::remove_file(self.staged_key(id));
    }

    /// Reads `state.json` (empty if absent or unreadable).
    pub fn read_status(&self) -> StatusFile {
        std::fs::read(self.root.join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes `state.json` atomically.
    pub fn write_status(&self, status: &StatusFile) -> Result<(), ClientError> {
        let path = self.root.join("state.json");
        let text = serde_json::to_vec_pretty(status)?;
        Ok(estuary_ca::bootstrap::write_atomic(&path, &text, 0o600)?)
    }
}

fn rename(from: &Path, to: &Path) -> Result<(), ClientError> {
    std::fs::rename(from, to)
        .map_err(|e| ClientError::io(to, e).context(format!("{} ->", from.display())))?;
    if let Some(dir) = to.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_replacements_are_completed_or_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(dir.path()).unwrap();
        let id = CertId::DeviceId;
        std::fs::write(state.key_path(id), "old key").unwrap();
        std::fs::write(state.cert_path(id), "old cert").unwrap();
        // A staged key without a certificate: the renewal never finished; the old pair stays.
        std::fs::write(state.staged_key(id), "new key").unwrap();
        state.recover(id).unwrap();
        assert_eq!(
            std::fs::read_to_string(state.key_path(id)).unwrap(),
            "old key"
        );
        assert!(!state.staged_key(id).exists());
        // Both staged: the replacement completes.
        std::fs::write(state.staged_key(id), "new key").unwrap();
        std::fs::write(state.staged_cert(id), "new cert").unwrap();
        state.recover(id).unwrap();
        assert_eq!(
            std::fs::read_to_string(state.key_path(id)).unwrap(),
            "new key"
        );
        assert_eq!(
            std::fs::read_to_string(state.cert_path(id)).unwrap(),
            "new cert"
        );
        // Crash after the key moved but before the certificate did.
        std::fs::write(state.key_path(id), "newer key").unwrap();
        std::fs::write(state.staged_cert(id), "newer cert").unwrap();
        state.recover(id).unwrap();
        assert_eq!(
            std::fs::read_to_string(state.cert_path(id)).unwrap(),
            "newer cert"
        );
    }

    #[test]
    fn planted_pending_files_are_discarded() {
        use estuary_ca::KeyChoice;
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let id = CertId::DeviceId;
        let key = FileKeySigner::new(KeyChoice::P256.generate().unwrap()).unwrap();
        let csr = crate::csr::build_csr(
            &key,
            crate::csr::subject_with_common_name("d").unwrap(),
            Vec::new(),
        )
        .unwrap();
        state.save_pending(id, &key, &csr).unwrap();
        assert!(state.load_pending(id).is_some());

        // The key is a symlink to someone else's key file.
        let elsewhere = dir.path().join("attacker.key");
        files::write_key(&elsewhere, &key).unwrap();
        std::fs::remove_file(state.pending_key(id)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, state.pending_key(id)).unwrap();
        assert!(state.load_pending(id).is_none());
        assert!(!files::is_present(&state.pending_key(id)));
        assert!(!files::is_present(&state.pending_csr(id)));
        assert!(elsewhere.exists(), "only the link is removed");

        // The CSR is writable by others.
        state.save_pending(id, &key, &csr).unwrap();
        std::fs::set_permissions(
            state.pending_csr(id),
            std::fs::Permissions::from_mode(0o666),
        )
        .unwrap();
        assert!(state.load_pending(id).is_none());
        assert!(!files::is_present(&state.pending_key(id)));

        // An oversized key.
        state.save_pending(id, &key, &csr).unwrap();
        std::fs::write(state.pending_key(id), vec![b'A'; 100_000]).unwrap();
        assert!(state.load_pending(id).is_none());
    }

    #[test]
    fn a_state_directory_writable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = StateDir::open(&root).unwrap_err().to_string();
        assert!(
            e.contains("writable by group or others") && e.contains("chmod 700"),
            "{e}"
        );
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(StateDir::open(&root).is_ok());
    }
}
