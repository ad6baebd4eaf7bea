//! Certificates and keys on disk: PEM, written atomically (temporary file, fsync, rename),
//! keys with mode 0600, so that a crash never leaves half a file.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use der::Decode;
use estuary_ca::FileKeySigner;
use x509_cert::Certificate;

use crate::ClientError;

/// Reads every certificate of a PEM file.
pub fn read_certificates(path: &Path) -> Result<Vec<Vec<u8>>, ClientError> {
    estuary_ca::bootstrap::read_pem_certificates_from_any(path).map_err(ClientError::from)
}

/// Largest key or CSR file read: a PEM RSA-4096 key is about 3.3 KiB.
pub const MAX_KEY_FILE: u64 = 64 * 1024;

fn config_error(path: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::Config(format!("{}: {e}", path.display()))
}

/// Reads at most [`MAX_KEY_FILE`] bytes of an open file; more is an error.
fn read_bounded(
    path: &Path,
    file: std::fs::File,
) -> Result<zeroize::Zeroizing<Vec<u8>>, ClientError> {
    use std::io::Read;
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    file.take(MAX_KEY_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ClientError::io(path, e))?;
    if bytes.len() as u64 > MAX_KEY_FILE {
        return Err(config_error(
            path,
            format!("larger than {MAX_KEY_FILE} bytes: not a key or CSR"),
        ));
    }
    Ok(bytes)
}

/// Opens a regular file (following symlinks) for reading; a FIFO, device or directory is
/// refused before it is opened (a FIFO would hang the open, /dev/zero never ends).
fn open_regular(path: &Path) -> Result<std::fs::File, ClientError> {
    let meta = std::fs::metadata(path).map_err(|e| ClientError::io(path, e))?;
    if !meta.is_file() {
        return Err(config_error(path, "not a regular file"));
    }
    std::fs::File::open(path).map_err(|e| ClientError::io(path, e))
}

fn key_from_pem(path: &Path, bytes: &[u8]) -> Result<FileKeySigner, ClientError> {
    let text = std::str::from_utf8(bytes).map_err(|_| config_error(path, "not a PEM file"))?;
    FileKeySigner::from_pem(text)
        .map_err(|e| ClientError::from(e).context(path.display().to_string()))
}

/// Reads a private key (PKCS#8, PKCS#1 or SEC1 PEM) from a regular file of at most
/// [`MAX_KEY_FILE`] bytes.
pub fn read_key(path: &Path) -> Result<FileKeySigner, ClientError> {
    let bytes = read_bounded(path, open_regular(path)?)?;
    key_from_pem(path, &bytes)
}

/// The effective uid of this process, from `/proc/self/status` (`None` where unreadable).
pub fn current_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Whether a file exists at `path`, as a symlink (even a dangling one) or anything else.
pub fn is_present(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// Why a file or directory is not one this program can trust as its own.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FileProblem {
    /// Owned by another user.
    #[error("is owned by uid {owner}, not by this user (uid {ours})")]
    NotOurs {
        /// The owner.
        owner: u32,
        /// This process's uid.
        ours: u32,
    },
    /// Writable by group or others.
    #[error("is writable by group or others (mode {mode:o})")]
    WritableByOthers {
        /// The permission bits.
        mode: u32,
    },
    /// A symbolic link.
    #[error("is a symbolic link")]
    Symlink,
    /// A FIFO, device, directory...
    #[error("is not a regular file")]
    NotRegular,
    /// Larger than [`MAX_KEY_FILE`].
    #[error("is larger than {MAX_KEY_FILE} bytes")]
    TooLarge,
    /// Could not be looked at.
    #[error("{0}")]
    Unreadable(#[source] std::io::Error),
}

/// Checks that a file or directory belongs to this process's uid (unchecked where
/// `/proc/self/status` is unreadable) and is not writable by group or others: nobody else
/// could have put or changed what is in it. Says why not.
pub fn check_owned_and_private(meta: &std::fs::Metadata) -> Result<(), FileProblem> {
    use std::os::unix::fs::MetadataExt;
    if let Some(uid) = current_uid() {
        if meta.uid() != uid {
            return Err(FileProblem::NotOurs {
                owner: meta.uid(),
                ours: uid,
            });
        }
    }
    if meta.mode() & 0o022 != 0 {
        return Err(FileProblem::WritableByOthers {
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Checks that `path` is a file this program wrote itself and nobody else could have changed:
/// a regular file (not a symlink, FIFO or device), owned by this process's uid (unchecked
/// where `/proc/self/status` is unreadable), not writable by group or others, at most
/// [`MAX_KEY_FILE`] bytes. Says why not.
pub fn check_own_file(path: &Path) -> Result<std::fs::Metadata, FileProblem> {
    let meta = std::fs::symlink_metadata(path).map_err(FileProblem::Unreadable)?;
    if meta.file_type().is_symlink() {
        return Err(FileProblem::Symlink);
    }
    if !meta.is_file() {
        return Err(FileProblem::NotRegular);
    }
    check_owned_and_private(&meta)?;
    if meta.len() > MAX_KEY_FILE {
        return Err(FileProblem::TooLarge);
    }
    Ok(meta)
}

/// Reads a file that must be this program's own ([`check_own_file`]); the file opened must be
/// the one checked.
fn read_own_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, ClientError> {
    use std::os::unix::fs::MetadataExt;
    let checked = check_own_file(path).map_err(|source| ClientError::NotOwnFile {
        path: path.to_path_buf(),
        source,
    })?;
    let file = std::fs::File::open(path).map_err(|e| ClientError::io(path, e))?;
    let opened = file.metadata().map_err(|e| ClientError::io(path, e))?;
    if (opened.dev(), opened.ino()) != (checked.dev(), checked.ino()) {
        return Err(config_error(path, "changed while it was being opened"));
    }
    read_bounded(path, file)
}

/// Reads a private key this program wrote (a pending request's key): see [`check_own_file`].
pub fn read_own_key(path: &Path) -> Result<FileKeySigner, ClientError> {
    let bytes = read_own_file(path)?;
    key_from_pem(path, &bytes)
}

/// Reads a CSR this program wrote (a pending request's): see [`check_own_file`].
pub fn read_own_csr(path: &Path) -> Result<Vec<u8>, ClientError> {
    let bytes = read_own_file(path)?;
    csr_from_pem(path, &bytes)
}

/// Writes certificates as PEM (mode 0644), atomically.
pub fn write_certificates(path: &Path, ders: &[Vec<u8>]) -> Result<(), ClientError> {
    let text = estuary_ca::bootstrap::pem_certificates(ders);
    estuary_ca::bootstrap::write_atomic(path, text.as_bytes(), 0o644).map_err(ClientError::from)
}

/// Writes a private key as PKCS#8 PEM (mode 0600), atomically.
pub fn write_key(path: &Path, key: &FileKeySigner) -> Result<(), ClientError> {
    estuary_ca::bootstrap::write_atomic(path, key.to_pem().as_bytes(), 0o600)
        .map_err(ClientError::from)
}

/// Writes raw PKCS#8 DER as PEM (mode 0600), atomically.
pub fn write_key_der(path: &Path, pkcs8: &[u8]) -> Result<(), ClientError> {
    let block = pem::Pem::new("PRIVATE KEY", pkcs8.to_vec());
    let text = zeroize::Zeroizing::new(estuary_ca::bootstrap::pem_encode(&block));
    zeroize::Zeroize::zeroize(&mut block.into_contents());
    estuary_ca::bootstrap::write_atomic(path, text.as_bytes(), 0o600).map_err(ClientError::from)
}

/// Writes a DER CSR as PEM (`CERTIFICATE REQUEST`, mode 0644), atomically.
pub fn write_csr(path: &Path, der: &[u8]) -> Result<(), ClientError> {
    let text =
        estuary_ca::bootstrap::pem_encode(&pem::Pem::new("CERTIFICATE REQUEST", der.to_vec()));
    estuary_ca::bootstrap::write_atomic(path, text.as_bytes(), 0o644).map_err(ClientError::from)
}

/// Reads a PEM CSR written by [`write_csr`]: the DER bytes exactly as they were sent.
pub fn read_csr(path: &Path) -> Result<Vec<u8>, ClientError> {
    let bytes = read_bounded(path, open_regular(path)?)?;
    csr_from_pem(path, &bytes)
}

fn csr_from_pem(path: &Path, text: &[u8]) -> Result<Vec<u8>, ClientError> {
    let block = pem::parse(text).map_err(|e| config_error(path, e))?;
    if block.tag() != "CERTIFICATE REQUEST" {
        return Err(ClientError::Config(format!(
            "{}: expected a CERTIFICATE REQUEST, found {}",
            path.display(),
            block.tag()
        )));
    }
    Ok(block.into_contents())
}

/// `path` with `suffix` appended to the file name (`key.pem` -> `key.pem.new`).
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// What a person wants to see about a certificate.
#[derive(Debug, Clone)]
pub struct CertificateSummary {
    /// Subject.
    pub subject: String,
    /// Issuer.
    pub issuer: String,
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
    /// SHA-256 fingerprint, upper-case hex with colons.
    pub sha256: String,
    /// Whether basicConstraints says CA.
    pub is_ca: bool,
}

/// Summarizes a DER certificate.
pub fn summarize(der: &[u8]) -> Result<CertificateSummary, ClientError> {
    let cert = Certificate::from_der(der)
        .map_err(|e| ClientError::Protocol(format!("certificate: {e}")))?;
    let tbs = &cert.tbs_certificate;
    let digest = estuary_ca::issue::thumbprint_sha256(der);
    let sha256 = digest
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let is_ca = tbs.extensions.iter().flatten().any(|e| {
        e.extn_id == const_oid::db::rfc5280::ID_CE_BASIC_CONSTRAINTS
            && x509_cert::ext::pkix::BasicConstraints::from_der(e.extn_value.as_bytes())
                .is_ok_and(|b| b.ca)
    });
    Ok(CertificateSummary {
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
        not_before: tbs.validity.not_before.to_system_time(),
        not_after: tbs.validity.not_after.to_system_time(),
        sha256,
        is_ca,
    })
}

/// Whether the certificate's public key is the key's.
pub fn key_matches(certificate: &[u8], key: &FileKeySigner) -> bool {
    use der::Encode;
    use estuary_ca::CaSigner;
    Certificate::from_der(certificate)
        .ok()
        .and_then(|c| c.tbs_certificate.subject_public_key_info.to_der().ok())
        .is_some_and(|spki| spki == key.public_key_der())
}

/// `YYYY-MM-DD HH:MM:SSZ`.
pub fn format_time(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let format =
        time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use estuary_ca::KeyChoice;
    use std::os::unix::fs::PermissionsExt;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn only_our_own_private_regular_small_files_are_read_as_pending() {
        let dir = tempfile::tempdir().unwrap();
        let key = FileKeySigner::new(KeyChoice::P256.generate().unwrap()).unwrap();
        let good = dir.path().join("good.key");
        write_key(&good, &key).unwrap();
        assert!(read_own_key(&good).is_ok());
        assert!(current_uid().is_some());

        // A symlink to a key (an attacker's, or ours): refused, and so is a dangling one.
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        let e = read_own_key(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let dangling = dir.path().join("dangling.key");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        assert!(is_present(&dangling) && !dangling.exists());
        assert!(read_own_key(&dangling).is_err());

        // Writable by others: anyone could have put their key there.
        let open = dir.path().join("open.key");
        write_key(&open, &key).unwrap();
        chmod(&open, 0o666);
        let e = read_own_key(&open).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        chmod(&open, 0o620);
        assert!(read_own_key(&open).is_err());

        // Too large.
        let big = dir.path().join("big.key");
        let mut text = key.to_pem().to_string();
        text.push_str(&"#".repeat(MAX_KEY_FILE as usize));
        std::fs::write(&big, text).unwrap();
        chmod(&big, 0o600);
        let e = read_own_key(&big).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");

        // Not a regular file.
        let e = read_own_csr(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
    }

    #[test]
    fn keys_are_read_from_regular_files_only_and_bounded() {
        // /dev/zero never ends: refused before it is read.
        let e = read_key(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("not a regular file"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            // Would block in open() until a writer comes.
            let e = read_key(&fifo).unwrap_err().to_string();
            assert!(e.contains("not a regular file"), "{e}");
        }
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; MAX_KEY_FILE as usize + 1]).unwrap();
        let e = read_csr(&big).unwrap_err().to_string();
        assert!(e.contains("larger than"), "{e}");
        // A key behind a symlink given by the user is still fine.
        let key = FileKeySigner::new(KeyChoice::P256.generate().unwrap()).unwrap();
        write_key(&dir.path().join("k.pem"), &key).unwrap();
        std::os::unix::fs::symlink(dir.path().join("k.pem"), dir.path().join("l.pem")).unwrap();
        assert!(read_key(&dir.path().join("l.pem")).is_ok());
    }
}
