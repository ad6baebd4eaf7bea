//! The CA and TLS server identity in a data directory: created on first start, reused after.
//!
//! ```text
//! DATA_DIR/ca-key.pem        CA private key, PKCS#8 PEM, mode 0600 (absent when the key is
//!                            in a PKCS#11 token: config `ca_key_uri`)
//! DATA_DIR/ca-cert.pem       CA certificate (issuing CA first, then its chain to the root)
//! DATA_DIR/server-key.pem    TLS server private key, PKCS#8 PEM, mode 0600
//! DATA_DIR/server-cert.pem   TLS server certificate, issued by the CA
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::issue::{certificate_sans, issue_server_certificate, self_signed_root, SanEntry};
use crate::pkcs11::{Pkcs11Signer, Pkcs11Uri};
use crate::{CaError, CertificateAuthority, FileKeySigner, KeyChoice};

/// Root CA lifetime: 20 years, as in the IoT Edge tutorial.
pub const ROOT_VALIDITY: Duration = Duration::from_secs(20 * 365 * 24 * 3600 + 5 * 24 * 3600);
/// TLS server certificate lifetime: 10 years, as in the IoT Edge tutorial.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600 + 2 * 24 * 3600);

/// File names inside the data directory.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// CA certificate chain file.
pub const CA_CERT_FILE: &str = "ca-cert.pem";
/// TLS server key file.
pub const SERVER_KEY_FILE: &str = "server-key.pem";
/// TLS server certificate file.
pub const SERVER_CERT_FILE: &str = "server-cert.pem";

/// The TLS identity the server presents.
#[derive(Clone)]
pub struct ServerIdentity {
    /// `[server certificate, CA chain...]`, DER: `openssl s_client -showcerts` prints the root second.
    pub chain_der: Vec<Vec<u8>>,
    /// PKCS#8 DER private key (wiped from memory when the identity is dropped).
    pub key_pkcs8_der: Vec<u8>,
}

impl std::fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerIdentity")
            .field("chain_der", &self.chain_der.len())
            .field("key_pkcs8_der", &"<redacted>")
            .finish()
    }
}

impl Drop for ServerIdentity {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key_pkcs8_der);
    }
}

/// Creates the data directory `dir` with mode 0700 (its parents as usual), or tightens an
/// existing one that this process's user owns and that others can read to 0700; one owned by
/// someone else is left alone with a warning. The directory holds the CA key, the server key
/// and the certificate database.
pub fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let io = |source| CaError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io)?;
        }
        match fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            // Created by someone else meanwhile: checked below like any existing directory.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
    }
    let meta = fs::metadata(dir).map_err(io)?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(());
    }
    // Our own user: /proc/self belongs to the process's effective user.
    let ours = fs::metadata("/proc/self").is_ok_and(|me| me.uid() == meta.uid());
    if ours {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode & !0o077)).map_err(io)?;
        tracing::info!(path = %dir.display(), old_mode = format!("{mode:o}"), "data directory made private (mode 0700)");
    } else {
        tracing::warn!(
            path = %dir.display(),
            mode = format!("{mode:o}"),
            "the data directory (CA key, server key, database) is readable by others and not ours to change; make it mode 0700"
        );
    }
    Ok(())
}

/// Loads the CA from `dir`, or creates a self-signed root there if none exists yet.
/// Returns the CA and whether it was created now.
pub fn load_or_create_ca(
    dir: &Path,
    key: KeyChoice,
) -> Result<(CertificateAuthority, bool), CaError> {
    let key_path = dir.join(CA_KEY_FILE);
    let cert_path = dir.join(CA_CERT_FILE);
    if cert_path.exists() && !key_path.exists() {
        return Err(CaError::BadFile {
            path: key_path,
            detail: format!(
                "{CA_CERT_FILE} is here but its key is not; if the CA key is in a PKCS#11 token, \
                 set ca_key_uri in the config file (see docs/hsm.md)"
            ),
        });
    }
    if key_path.exists() || cert_path.exists() {
        return Ok((load_ca(&key_path, &cert_path)?, false));
    }
    create_private_dir(dir)?;
    let signer = FileKeySigner::new(key.generate()?)?;
    let root_der = new_root(&signer)?;
    write_atomic(&key_path, signer.to_pem().as_bytes(), 0o600)?;
    write_atomic(
        &cert_path,
        pem_certificates(std::slice::from_ref(&root_der)).as_bytes(),
        0o644,
    )?;
    Ok((
        CertificateAuthority::new(Arc::new(signer), vec![root_der])?,
        true,
    ))
}

/// A new self-signed root certificate (DER) for `signer`: `CN=Estuary Root CA <6 hex>`.
fn new_root(signer: &dyn crate::CaSigner) -> Result<Vec<u8>, CaError> {
    let mut suffix = [0u8; 3];
    aws_lc_rs::rand::fill(&mut suffix).map_err(|_| CaError::Key("no randomness".into()))?;
    let subject = Name::from_str(&format!(
        "CN=Estuary Root CA {},O=Estuary",
        crate::issue::hex_lower(&suffix)
    ))?;
    Ok(self_signed_root(signer, subject, ROOT_VALIDITY)?.to_der()?)
}

/// Makes a new key of type `key` in the PKCS#11 token `uri` names and a self-signed root CA
/// for it in `dir` (`ca-cert.pem` only: the key stays in the token). Refuses when `dir`
/// already has a CA or the token already has an object with the key's label.
pub fn create_root_in_token(
    dir: &Path,
    uri: &Pkcs11Uri,
    key: KeyChoice,
) -> Result<CertificateAuthority, CaError> {
    if let Some(existing) = crate::import::existing_ca(dir) {
        return Err(CaError::BadFile {
            path: existing,
            detail: "a CA already exists in this data directory; refusing to replace it".into(),
        });
    }
    create_private_dir(dir)?;
    let signer = Pkcs11Signer::generate(uri, key)?;
    let root_der = new_root(&signer)?;
    write_atomic(
        &dir.join(CA_CERT_FILE),
        pem_certificates(std::slice::from_ref(&root_der)).as_bytes(),
        0o644,
    )?;
    CertificateAuthority::new(Arc::new(signer), vec![root_der])
}

/// Loads the CA of `dir` whose key is in the PKCS#11 token `uri` names: `ca-cert.pem` from
/// `dir`, the key from the token; its public key must be the certificate's. Refuses when
/// `dir` also has a `ca-key.pem` (which key is the CA's would be ambiguous).
pub fn load_ca_from_token(dir: &Path, uri: &Pkcs11Uri) -> Result<CertificateAuthority, CaError> {
    let key_path = dir.join(CA_KEY_FILE);
    let cert_path = dir.join(CA_CERT_FILE);
    if key_path.exists() {
        return Err(CaError::BadFile {
            path: key_path,
            detail: format!(
                "ca_key_uri names a key in a PKCS#11 token, but this data directory also has a \
                 CA key file: which one is the CA's is ambiguous. Remove ca_key_uri to use the \
                 file, or move {CA_KEY_FILE} away (it should not exist when the key is in a token)"
            ),
        });
    }
    if !cert_path.exists() {
        return Err(CaError::BadFile {
            path: cert_path,
            detail: "no CA certificate: with ca_key_uri the CA is created by \
                     `estuary ca init --key-uri URI` or brought in by `estuary ca import --key-uri URI`"
                .into(),
        });
    }
    let signer = Pkcs11Signer::open(uri)?;
    let chain = read_pem_certificates(&cert_path)?;
    CertificateAuthority::new(Arc::new(signer), chain).map_err(|e| match e {
        CaError::Key(_) => CaError::Token(format!(
            "the key {} is not the key of the CA certificate in {}: their public keys differ",
            uri.describe(),
            cert_path.display()
        )),
        other => CaError::InFile {
            path: cert_path.clone(),
            source: Box::new(other),
        },
    })
}

/// Loads a CA key and its certificate chain.
pub fn load_ca(key_path: &Path, cert_path: &Path) -> Result<CertificateAuthority, CaError> {
    let key_pem = read_secret(key_path)?;
    let signer = FileKeySigner::from_pem(&key_pem).map_err(|e| CaError::InFile {
        path: key_path.to_path_buf(),
        source: Box::new(e),
    })?;
    let chain = read_pem_certificates(cert_path)?;
    CertificateAuthority::new(Arc::new(signer), chain).map_err(|e| CaError::InFile {
        path: cert_path.to_path_buf(),
        source: Box::new(e),
    })
}

/// Loads the TLS server identity from `dir`, creating it (key of `key` type, certificate
/// issued by `ca`) if missing. The certificate is re-issued, keeping its key, when it lacks
/// one of `sans` or was not issued by this CA.
pub fn load_or_create_server_identity(
    dir: &Path,
    ca: &CertificateAuthority,
    key: KeyChoice,
    sans: &[SanEntry],
) -> Result<(ServerIdentity, bool), CaError> {
    let key_path = dir.join(SERVER_KEY_FILE);
    let cert_path = dir.join(SERVER_CERT_FILE);
    let signer = if key_path.exists() {
        FileKeySigner::from_pem(&read_secret(&key_path)?).map_err(|e| CaError::InFile {
            path: key_path.clone(),
            source: Box::new(e),
        })?
    } else {
        // Ed25519 is not offered by every TLS client; serve P-256 then.
        let server_key = if key == KeyChoice::Ed25519 {
            KeyChoice::P256
        } else {
            key
        };
        let signer = FileKeySigner::new(server_key.generate()?)?;
        write_atomic(&key_path, signer.to_pem().as_bytes(), 0o600)?;
        signer
    };
    use crate::CaSigner as _;
    let spki = SubjectPublicKeyInfoOwned::from_der(signer.public_key_der())?;

    let existing = if cert_path.exists() {
        read_pem_certificates(&cert_path)?.into_iter().next()
    } else {
        None
    };
    let reusable = existing.as_ref().and_then(|der| {
        let cert = Certificate::from_der(der).ok()?;
        let have = certificate_sans(&cert);
        let same_key = cert.tbs_certificate.subject_public_key_info == spki;
        let same_issuer = cert.tbs_certificate.issuer == ca.certificate().tbs_certificate.subject;
        let not_expired =
            cert.tbs_certificate.validity.not_after.to_system_time() > std::time::SystemTime::now();
        (same_key && same_issuer && not_expired && sans.iter().all(|s| have.contains(s)))
            .then(|| der.clone())
    });
    let created = reusable.is_none();
    let server_der = match reusable {
        Some(der) => der,
        None => {
            let subject = Name::from_str("CN=estuary EST server,O=Estuary")?;
            let cert = issue_server_certificate(ca, subject, spki, sans, SERVER_VALIDITY)?;
            let der = cert.to_der()?;
            write_atomic(
                &cert_path,
                pem_certificates(std::slice::from_ref(&der)).as_bytes(),
                0o644,
            )?;
            der
        }
    };
    let mut chain_der = vec![server_der];
    chain_der.extend(ca.chain_der().iter().cloned());
    Ok((
        ServerIdentity {
            chain_der,
            key_pkcs8_der: signer.key_pair().serialize_der(),
        },
        created,
    ))
}

/// The SANs every server certificate carries: `DNS:localhost`, `IP:127.0.0.1`, `IP:::1`.
pub fn default_server_sans() -> Vec<SanEntry> {
    vec![
        SanEntry::Dns("localhost".into()),
        SanEntry::Ip(std::net::Ipv4Addr::LOCALHOST.into()),
        SanEntry::Ip(std::net::Ipv6Addr::LOCALHOST.into()),
    ]
}

/// PEM text of one block with LF line endings, as openssl writes it (the `pem` crate's
/// default is CRLF: a certificate saved from `openssl s_client` would differ byte for byte
/// from the same certificate written by Estuary).
pub fn pem_encode(block: &pem::Pem) -> String {
    pem::encode_config(
        block,
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// PEM text of DER certificates.
pub fn pem_certificates(ders: &[Vec<u8>]) -> String {
    ders.iter()
        .map(|d| pem_encode(&pem::Pem::new("CERTIFICATE", d.clone())))
        .collect::<Vec<_>>()
        .join("")
}

/// Reads every `CERTIFICATE` block of a PEM file (a regular file: see [`read_to_string`]).
pub fn read_pem_certificates(path: &Path) -> Result<Vec<Vec<u8>>, CaError> {
    let text = read_to_string(path)?;
    pem_certificates_in(path, &text)
}

/// [`read_pem_certificates`] for a file given on a command line, which may also be a pipe
/// (`--ca <(...)`, `/dev/stdin`): read up to [`MAX_PEM_FILE_BYTES`].
pub fn read_pem_certificates_from_any(path: &Path) -> Result<Vec<Vec<u8>>, CaError> {
    use std::io::Read as _;
    let io = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut text = String::new();
    fs::File::open(path)
        .map_err(io)?
        .take(MAX_PEM_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(io)?;
    if text.len() as u64 > MAX_PEM_FILE_BYTES {
        return Err(CaError::BadFile {
            path: path.to_path_buf(),
            detail: format!("larger than {} KiB", MAX_PEM_FILE_BYTES / 1024),
        });
    }
    pem_certificates_in(path, &text)
}

fn pem_certificates_in(path: &Path, text: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let blocks = pem::parse_many(text).map_err(|source| CaError::Pem {
        path: path.to_path_buf(),
        source,
    })?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(CaError::BadFile {
            path: path.to_path_buf(),
            detail: "no CERTIFICATE in the file".into(),
        });
    }
    Ok(certs)
}

/// Reads a private key file into memory that is wiped when dropped.
pub fn read_secret(path: &Path) -> Result<zeroize::Zeroizing<String>, CaError> {
    read_to_string(path).map(zeroize::Zeroizing::new)
}

/// The largest certificate or key file read (a chain of a few certificates is a few KiB).
const MAX_PEM_FILE_BYTES: u64 = 1 << 20;

/// Reads a PEM file: a regular file of at most [`MAX_PEM_FILE_BYTES`] ([`read_regular_file`]).
fn read_to_string(path: &Path) -> Result<String, CaError> {
    let io = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let bytes = read_regular_file(path, MAX_PEM_FILE_BYTES).map_err(io)?;
    String::from_utf8(bytes)
        .map_err(|e| io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

/// Reads a file the server is configured with (a certificate, a key, a CRL): a regular file of
/// at most `max_bytes`, never a FIFO (whose read would wait for a writer for ever) or a device.
pub fn read_regular_file(path: &Path, max_bytes: u64) -> std::io::Result<Vec<u8>> {
    let meta = fs::metadata(path)?;
    if !meta.is_file() || meta.len() > max_bytes {
        let limit = if max_bytes.is_multiple_of(1 << 20) {
            format!("{} MiB", max_bytes >> 20)
        } else {
            format!("{} KiB", max_bytes / 1024)
        };
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("not a regular file of at most {limit}"),
        ));
    }
    fs::read(path)
}

/// Writes a file atomically: a temporary file in the same directory with `mode`, fsync, then
/// rename over the target and fsync the directory. A crash leaves the old file or the new one,
/// never half of one.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    write_atomic_owned(path, contents, mode, None)
}

/// [`write_atomic`], and the new file is given `owner` (uid, gid) and `mode` through its open
/// handle (fchown, fchmod) before it is renamed into place: nothing is changed by path after
/// the rename, so a directory writable by someone else cannot redirect the change to another
/// file (a symbolic link swapped in for `path`). Failing to give the file its owner (not
/// root) fails the write and leaves the old file.
pub fn write_atomic_owned(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), CaError> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let io = |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io)?;
    let mut nonce = [0u8; 6];
    aws_lc_rs::rand::fill(&mut nonce).map_err(|_| CaError::Key("no randomness".into()))?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "file".into());
    let tmp: PathBuf = dir.join(format!(
        ".{file_name}.{}.tmp",
        crate::issue::hex_lower(&nonce)
    ));
    let result = (|| {
        // Created private; the final mode is set once the owner is right.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode & 0o600)
            .open(&tmp)?;
        file.write_all(contents)?;
        if let Some((uid, gid)) = owner {
            let now = file.metadata()?;
            if (now.uid(), now.gid()) != (uid, gid) {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            }
        }
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(io)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// Regression: the data directory was created 0755 (readable by every local user).
    #[test]
    fn data_directory_is_created_private_and_an_open_one_of_ours_is_tightened() {
        let tmp = tempfile::tempdir().unwrap();
        let fresh = tmp.path().join("a").join("data");
        let (_, created) = load_or_create_ca(&fresh, KeyChoice::P256).unwrap();
        assert!(created);
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&fresh.join(CA_KEY_FILE)), 0o600);

        let open = tmp.path().join("open");
        fs::create_dir(&open).unwrap();
        fs::set_permissions(&open, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
        // Already private: left as it is.
        fs::set_permissions(&open, fs::Permissions::from_mode(0o500)).unwrap();
        create_private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o500);
        fs::set_permissions(&open, fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn server_identity_debug_does_not_show_the_key() {
        let identity = ServerIdentity {
            chain_der: vec![vec![1]],
            key_pkcs8_der: vec![0x42; 8],
        };
        let text = format!("{identity:?}");
        assert!(text.contains("redacted") && !text.contains("66"), "{text}");
    }
}
