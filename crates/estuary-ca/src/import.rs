//! Bringing a CA into a data directory: an existing (enterprise) CA with its key and chain,
//! or a new issuing CA under a new root that is then kept offline.
//!
//! Either way the data directory ends up as [`bootstrap`](crate::bootstrap) expects it:
//! `ca-key.pem` (PKCS#8, unencrypted, mode 0600) and `ca-cert.pem` (issuing CA first, then its
//! chain up to the root), which is what `/cacerts` serves (RFC 7030 §4.1.3).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use const_oid::db::rfc5280;
use der::asn1::OctetString;
use der::{Decode, Encode};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::{
    AuthorityKeyIdentifier, BasicConstraints, KeyUsage, KeyUsages, SubjectKeyIdentifier,
};
use x509_cert::ext::Extension;
use x509_cert::name::Name;
use x509_cert::Certificate;

use crate::bootstrap::{pem_certificates, write_atomic, CA_CERT_FILE, CA_KEY_FILE, ROOT_VALIDITY};
use crate::issue::{
    extension, hex_lower, random_serial, self_signed_root, sign_certificate,
    subject_key_identifier, thumbprint_sha256,
};
use crate::pkcs11::{Pkcs11Signer, Pkcs11Uri};
use crate::{CaError, CaSigner, CertificateAuthority, FileKeySigner, KeyChoice};

/// Issuing (intermediate) CA lifetime made by [`create_intermediate_ca`]: 10 years.
pub const INTERMEDIATE_VALIDITY: Duration =
    Duration::from_secs(10 * 365 * 24 * 3600 + 2 * 24 * 3600);
/// Offline root key file, in the root directory.
pub const ROOT_KEY_FILE: &str = "root-key.pem";
/// Offline root certificate file, in the root directory.
pub const ROOT_CERT_FILE: &str = "root-cert.pem";

/// The result of [`import_ca`].
#[derive(Debug)]
pub struct ImportedCa {
    /// The CA as the server will load it.
    pub ca: CertificateAuthority,
    /// Things worth telling the operator that do not stop the import.
    pub warnings: Vec<String>,
}

/// The result of [`create_intermediate_ca`].
#[derive(Debug)]
pub struct IntermediateCa {
    /// The issuing CA as the server will load it (chain: intermediate, root).
    pub ca: CertificateAuthority,
    /// The new root's private key file: to be moved offline.
    pub root_key_path: PathBuf,
    /// The new root's certificate file: the trust anchor devices need.
    pub root_cert_path: PathBuf,
}

/// The facts `estuary ca show` prints about one certificate.
#[derive(Debug, Clone)]
pub struct CertificateSummary {
    /// Subject, RFC 4514.
    pub subject: String,
    /// Issuer, RFC 4514.
    pub issuer: String,
    /// Serial number, lower-case hex.
    pub serial_hex: String,
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
    /// SHA-256 of the DER, upper-case hex without separators.
    pub sha256_fingerprint: String,
    /// basicConstraints cA.
    pub is_ca: bool,
    /// basicConstraints pathLenConstraint.
    pub path_len: Option<u8>,
    /// Issuer and subject are the same name (a root, normally).
    pub self_issued: bool,
}

/// Where a CA already exists in `data_dir` (its key or certificate file), if it does.
pub fn existing_ca(data_dir: &Path) -> Option<PathBuf> {
    [CA_KEY_FILE, CA_CERT_FILE]
        .into_iter()
        .map(|f| data_dir.join(f))
        .find(|p| p.exists())
}

fn refuse_existing(data_dir: &Path) -> Result<(), CaError> {
    match existing_ca(data_dir) {
        Some(path) => Err(CaError::BadFile {
            path,
            detail: "a CA already exists in this data directory; refusing to replace it \
                     (move the data directory's ca-key.pem and ca-cert.pem away first)"
                .into(),
        }),
        None => Ok(()),
    }
}

fn bad(path: &Path, detail: impl Into<String>) -> CaError {
    CaError::BadFile {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

fn bad_because(
    path: &Path,
    what: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> CaError {
    CaError::BadFileContents {
        path: path.to_path_buf(),
        what: what.into(),
        source: Box::new(source),
    }
}

fn in_file(path: &Path, e: CaError) -> CaError {
    CaError::InFile {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, CaError> {
    // "cannot read the file" says what was being done, which Io's message does not.
    std::fs::read(path).map_err(|e| bad_because(path, "cannot read the file", e))
}

/// Imports an existing CA into `data_dir`: its certificate (`cert_path`, PEM; further
/// certificates in the same file are taken as chain), its chain up to the root (`chain_path`,
/// PEM, any order, optional) and its private key (`key_path`: PKCS#8, encrypted PKCS#8 with
/// the password in `key_password_file`, PKCS#1 or SEC1).
///
/// Checks that the key matches the certificate, that the certificate is a CA (basicConstraints
/// cA TRUE, keyUsage keyCertSign when keyUsage is present, RFC 5280 §4.2.1.9 and §4.2.1.3),
/// that it has not expired, and that each chain certificate issued the one before it (its
/// signature verifies). Refuses when `data_dir` already has a CA. Writes nothing unless every
/// check passes; then writes `ca-key.pem` (PKCS#8, unencrypted, 0600) and `ca-cert.pem`
/// (issuing CA first, then the chain to the root).
pub fn import_ca(
    data_dir: &Path,
    cert_path: &Path,
    chain_path: Option<&Path>,
    key_path: &Path,
    key_password_file: Option<&Path>,
) -> Result<ImportedCa, CaError> {
    import_ca_with_key(
        data_dir,
        cert_path,
        chain_path,
        CaKeySource::File {
            path: key_path,
            password_file: key_password_file,
        },
    )
}

/// Where the key of an imported CA is.
#[derive(Debug, Clone, Copy)]
pub enum CaKeySource<'a> {
    /// A PEM key file, copied into the data directory as `ca-key.pem`.
    File {
        /// The key file.
        path: &'a Path,
        /// A file whose first line is the password of an encrypted PKCS#8 key.
        password_file: Option<&'a Path>,
    },
    /// A key already in a PKCS#11 token, used there: nothing of it is written.
    Token(&'a Pkcs11Uri),
}

/// [`import_ca`] with the key in a file or in a PKCS#11 token. With a token key only
/// `ca-cert.pem` is written, after checking that the token's public key is the certificate's.
pub fn import_ca_with_key(
    data_dir: &Path,
    cert_path: &Path,
    chain_path: Option<&Path>,
    key: CaKeySource<'_>,
) -> Result<ImportedCa, CaError> {
    refuse_existing(data_dir)?;
    let mut warnings = Vec::new();

    let mut cert_ders = read_certificates(cert_path)?;
    let ca_der = cert_ders.remove(0);
    let ca_cert = parse_certificate(&ca_der, cert_path)?;
    let mut pool: Vec<(Vec<u8>, PathBuf)> = cert_ders
        .into_iter()
        .map(|d| (d, cert_path.to_path_buf()))
        .collect();
    if let Some(chain_path) = chain_path {
        pool.extend(
            read_certificates(chain_path)?
                .into_iter()
                .map(|d| (d, chain_path.to_path_buf())),
        );
    }
    // A "full chain" file may repeat the CA certificate itself, or a certificate twice.
    pool.retain(|(d, _)| *d != ca_der);
    let mut unique: Vec<(Vec<u8>, PathBuf)> = Vec::new();
    for item in pool {
        if !unique.iter().any(|(d, _)| *d == item.0) {
            unique.push(item);
        }
    }

    check_is_ca(&ca_cert, cert_path, &mut warnings)?;
    let now = SystemTime::now();
    let not_after = ca_cert.tbs_certificate.validity.not_after.to_system_time();
    if not_after <= now {
        return Err(bad(
            cert_path,
            format!(
                "the CA certificate expired on {}",
                ca_cert.tbs_certificate.validity.not_after
            ),
        ));
    }
    if ca_cert.tbs_certificate.validity.not_before.to_system_time() > now {
        warnings.push(format!(
            "{}: the CA certificate is not valid before {}",
            cert_path.display(),
            ca_cert.tbs_certificate.validity.not_before
        ));
    }

    let (signer, key_pem): (Arc<dyn CaSigner>, _) = match key {
        CaKeySource::File {
            path,
            password_file,
        } => {
            let password = match password_file {
                Some(p) => Some(read_password_file(p)?),
                None => None,
            };
            let signer = read_private_key(path, password.as_ref().map(|p| p.as_slice()))?;
            let key_pem = signer.to_pem();
            (Arc::new(signer), Some((path, key_pem)))
        }
        CaKeySource::Token(uri) => (Arc::new(Pkcs11Signer::open(uri)?), None),
    };
    let cert_spki = ca_cert.tbs_certificate.subject_public_key_info.to_der()?;
    if cert_spki != signer.public_key_der() {
        let problem = format!(
            "does not belong to the certificate in {} ({}): their public keys differ",
            cert_path.display(),
            ca_cert.tbs_certificate.subject
        );
        return Err(match (&key, &key_pem) {
            (CaKeySource::Token(uri), _) => {
                CaError::Token(format!("the key {} {problem}", uri.describe()))
            }
            (_, Some((path, _))) => bad(path, format!("this private key {problem}")),
            _ => CaError::Key(problem),
        });
    }

    let chain = order_chain(&ca_der, &ca_cert, unique, &mut warnings)?;
    let ca = CertificateAuthority::new(signer, chain.clone()).map_err(|e| in_file(cert_path, e))?;

    // Everything checked: write the key first (an orphaned key without a certificate is
    // refused by the next start rather than silently replaced).
    refuse_existing(data_dir)?;
    crate::bootstrap::create_private_dir(data_dir)?;
    if let Some((_, key_pem)) = &key_pem {
        write_atomic(&data_dir.join(CA_KEY_FILE), key_pem.as_bytes(), 0o600)?;
    }
    write_atomic(
        &data_dir.join(CA_CERT_FILE),
        pem_certificates(&chain).as_bytes(),
        0o644,
    )?;
    Ok(ImportedCa { ca, warnings })
}

fn read_certificates(path: &Path) -> Result<Vec<Vec<u8>>, CaError> {
    let bytes = read_file(path)?;
    let text = String::from_utf8(bytes).map_err(|_| {
        bad(
            path,
            "not a PEM file (DER is not accepted; convert with `openssl x509 -inform DER`)",
        )
    })?;
    let blocks = pem::parse_many(&text).map_err(|e| bad_because(path, "not valid PEM", e))?;
    let certs: Vec<Vec<u8>> = blocks
        .into_iter()
        .filter(|p| p.tag() == "CERTIFICATE")
        .map(pem::Pem::into_contents)
        .collect();
    if certs.is_empty() {
        return Err(bad(path, "no CERTIFICATE block in the file"));
    }
    for der in &certs {
        parse_certificate(der, path)?;
    }
    Ok(certs)
}

fn parse_certificate(der: &[u8], path: &Path) -> Result<Certificate, CaError> {
    Certificate::from_der(der).map_err(|e| bad_because(path, "not a valid X.509 certificate", e))
}

fn extension_of(cert: &Certificate, oid: const_oid::ObjectIdentifier) -> Option<&Extension> {
    cert.tbs_certificate
        .extensions
        .iter()
        .flatten()
        .find(|e| e.extn_id == oid)
}

fn basic_constraints(cert: &Certificate, path: &Path) -> Result<Option<BasicConstraints>, CaError> {
    extension_of(cert, rfc5280::ID_CE_BASIC_CONSTRAINTS)
        .map(|e| {
            BasicConstraints::from_der(e.extn_value.as_bytes()).map_err(|err| {
                bad(
                    path,
                    format!(
                        "{}: malformed basicConstraints: {err}",
                        cert.tbs_certificate.subject
                    ),
                )
            })
        })
        .transpose()
}

/// RFC 5280 §4.2.1.9 (cA TRUE) and §4.2.1.3 (keyCertSign when keyUsage is present).
fn check_is_ca(cert: &Certificate, path: &Path, warnings: &mut Vec<String>) -> Result<(), CaError> {
    let subject = &cert.tbs_certificate.subject;
    let bc = basic_constraints(cert, path)?;
    match bc {
        Some(BasicConstraints {
            ca: true,
            path_len_constraint,
        }) => {
            if path_len_constraint == Some(0) {
                warnings.push(format!(
                    "{}: {subject} has pathlen:0, so certificates issued under the edge-ca profile (CA:TRUE) will not verify",
                    path.display()
                ));
            }
        }
        _ => {
            return Err(bad(
                path,
                format!("{subject} is not a CA certificate (basicConstraints cA is not TRUE)"),
            ))
        }
    }
    if let Some(ext) = extension_of(cert, rfc5280::ID_CE_KEY_USAGE) {
        let ku = KeyUsage::from_der(ext.extn_value.as_bytes())
            .map_err(|e| bad_because(path, format!("{subject}: malformed keyUsage"), e))?;
        if !ku.key_cert_sign() {
            return Err(bad(
                path,
                format!("{subject} may not sign certificates (its keyUsage lacks keyCertSign)"),
            ));
        }
        if !ku.crl_sign() {
            warnings.push(format!(
                "{}: {subject} lacks keyUsage cRLSign, so CRLs it signs will not be accepted",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Orders the chain from the issuing CA up to the root, checking at each step that the next
/// certificate's subject is the issuer's name and that its key verifies the signature
/// (RFC 5280 §6.1.3 (a)(1) and (a)(4)).
fn order_chain(
    ca_der: &[u8],
    ca_cert: &Certificate,
    mut pool: Vec<(Vec<u8>, PathBuf)>,
    warnings: &mut Vec<String>,
) -> Result<Vec<Vec<u8>>, CaError> {
    let mut chain = vec![ca_der.to_vec()];
    let mut current = ca_cert.clone();
    let mut current_der = ca_der.to_vec();
    loop {
        if current.tbs_certificate.issuer == current.tbs_certificate.subject {
            break; // a root: its self-signature is not what makes it trusted
        }
        let Some(idx) = pool.iter().position(|(der, _)| {
            Certificate::from_der(der)
                .map(|c| c.tbs_certificate.subject == current.tbs_certificate.issuer)
                .unwrap_or(false)
        }) else {
            if !pool.is_empty() || chain.len() == 1 {
                warnings.push(format!(
                    "the chain ends at {}, which is not self-signed: give devices its issuer ({}) as the trust anchor, or import with --chain up to the root",
                    current.tbs_certificate.subject, current.tbs_certificate.issuer
                ));
            } else {
                warnings.push(format!(
                    "the chain ends at {}, which is not self-signed",
                    current.tbs_certificate.subject
                ));
            }
            break;
        };
        let (issuer_der, issuer_path) = pool.remove(idx);
        let issuer = parse_certificate(&issuer_der, &issuer_path)?;
        let parts = estuary_wire::signature::split_signed(&current_der, "certificate")?;
        estuary_wire::signature::verify(
            &issuer.tbs_certificate.subject_public_key_info,
            &parts.algorithm,
            parts.tbs,
            parts.signature,
        )
        .map_err(|e| {
            bad(
                &issuer_path,
                format!(
                    "{} did not issue {}: the signature does not verify with its key ({e})",
                    issuer.tbs_certificate.subject, current.tbs_certificate.subject
                ),
            )
        })?;
        match basic_constraints(&issuer, &issuer_path)? {
            Some(BasicConstraints { ca: true, .. }) => {}
            _ => {
                return Err(bad(
                    &issuer_path,
                    format!(
                        "{} is not a CA certificate (basicConstraints cA is not TRUE)",
                        issuer.tbs_certificate.subject
                    ),
                ))
            }
        }
        chain.push(issuer_der.clone());
        current = issuer;
        current_der = issuer_der;
    }
    if let Some((der, path)) = pool.first() {
        let subject = Certificate::from_der(der)
            .map(|c| c.tbs_certificate.subject.to_string())
            .unwrap_or_default();
        return Err(bad(
            path,
            format!(
                "{subject} is not in the chain of {} (no certificate in the chain was issued by it)",
                ca_cert.tbs_certificate.subject
            ),
        ));
    }
    Ok(chain)
}

fn read_password_file(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, CaError> {
    let mut bytes = zeroize::Zeroizing::new(read_file(path)?);
    // One trailing newline (as `echo secret > file` writes) is not part of the password.
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(bad(path, "the password file is empty"));
    }
    Ok(bytes)
}

/// Reads a PEM private key: PKCS#8 (`PRIVATE KEY`), encrypted PKCS#8 (`ENCRYPTED PRIVATE
/// KEY`, RFC 5958 §3 / PKCS#5 PBES2, needs `password`), PKCS#1 (`RSA PRIVATE KEY`) or SEC1
/// (`EC PRIVATE KEY`). Errors name the file and the problem.
pub fn read_private_key(path: &Path, password: Option<&[u8]>) -> Result<FileKeySigner, CaError> {
    use zeroize::{Zeroize as _, Zeroizing};
    let bytes = read_file(path)?;
    let text = Zeroizing::new(String::from_utf8(bytes).map_err(|e| {
        e.into_bytes().zeroize();
        bad(path, "not a PEM file")
    })?);
    let mut blocks =
        pem::parse_many(text.as_str()).map_err(|e| bad_because(path, "not valid PEM", e))?;
    // Wipe every decoded block (the key and anything else in the file) when done.
    let result = private_key_from_blocks(path, password, &blocks);
    for block in blocks.drain(..) {
        block.into_contents().zeroize();
    }
    result
}

fn private_key_from_blocks(
    path: &Path,
    password: Option<&[u8]>,
    blocks: &[pem::Pem],
) -> Result<FileKeySigner, CaError> {
    let block = blocks
        .iter()
        .find(|b| b.tag().ends_with("PRIVATE KEY"))
        .ok_or_else(|| {
            bad(
                path,
                "no private key in the file (expected a PEM block PRIVATE KEY, ENCRYPTED PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
            )
        })?;
    if block
        .headers()
        .get("Proc-Type")
        .is_some_and(|v| v.contains("ENCRYPTED"))
    {
        return Err(bad(
            path,
            "legacy OpenSSL-encrypted PEM key (Proc-Type: 4,ENCRYPTED) is not supported; convert it to encrypted PKCS#8 with `openssl pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out KEY.p8`",
        ));
    }
    let pkcs8: zeroize::Zeroizing<Vec<u8>> = zeroize::Zeroizing::new(match block.tag() {
        "PRIVATE KEY" => block.contents().to_vec(),
        "ENCRYPTED PRIVATE KEY" => {
            // The scheme is read leniently first: the strict parse below fails on a scheme it
            // does not know (PBES1, PBES2 with DES) with a bare ASN.1 error.
            if let Some(scheme) = unsupported_encryption_scheme(block.contents()) {
                return Err(bad(
                    path,
                    format!(
                        "cannot decrypt the key: its encryption scheme, {scheme}, is not supported; {REENCRYPT}"
                    ),
                ));
            }
            let password = password.ok_or_else(|| {
                bad(
                    path,
                    "the key is encrypted and no password was given: put its password on the first line of a file and pass it with --key-password-file FILE",
                )
            })?;
            let info = pkcs8::EncryptedPrivateKeyInfo::try_from(block.contents())
                .map_err(|e| bad_because(path, "malformed encrypted PKCS#8 key", e))?;
            let doc = info
                .decrypt(password)
                .map_err(|e| decrypt_error(path, &e))?;
            doc.as_bytes().to_vec()
        }
        "RSA PRIVATE KEY" => {
            use aws_lc_rs::encoding::AsDer as _;
            let key = aws_lc_rs::rsa::KeyPair::from_der(block.contents())
                .map_err(|e| bad_because(path, "not a usable PKCS#1 RSA key", e))?;
            let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> = key
                .as_der()
                .map_err(|_| bad(path, "cannot convert the RSA key to PKCS#8"))?;
            der.as_ref().to_vec()
        }
        "EC PRIVATE KEY" => {
            use aws_lc_rs::signature::{
                EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING, ECDSA_P384_SHA384_ASN1_SIGNING,
            };
            let key = EcdsaKeyPair::from_private_key_der(
                &ECDSA_P256_SHA256_ASN1_SIGNING,
                block.contents(),
            )
            .or_else(|_| {
                EcdsaKeyPair::from_private_key_der(
                    &ECDSA_P384_SHA384_ASN1_SIGNING,
                    block.contents(),
                )
            })
            .map_err(|e| bad_because(path, "not a usable P-256 or P-384 SEC1 key", e))?;
            key.to_pkcs8v1()
                .map_err(|_| bad(path, "cannot convert the EC key to PKCS#8"))?
                .as_ref()
                .to_vec()
        }
        other => return Err(bad(path, format!("unsupported key block {other:?}"))),
    });
    let key_pair = rcgen::KeyPair::try_from(pkcs8.as_slice()).map_err(|e| {
        if block.tag() == "ENCRYPTED PRIVATE KEY" {
            // A wrong password decrypts to garbage whose padding happens to look right now and
            // then (about 1 in 256): what comes out is then not a key.
            return bad(path, WRONG_PASSWORD);
        }
        bad_because(path, "not a usable key (P-256, P-384, RSA or Ed25519)", e)
    })?;
    FileKeySigner::new(key_pair).map_err(|e| in_file(path, e))
}

/// Follows the key file's name (`FILE: wrong password for the encrypted key ...`).
const WRONG_PASSWORD: &str =
    "wrong password for the encrypted key (the first line of --key-password-file does not decrypt it)";

/// How to re-encrypt a key with a scheme Estuary reads (it prompts for the old password).
const REENCRYPT: &str =
    "re-encrypt it with `openssl pkcs8 -topk8 -v2 aes-256-cbc -in KEY -out KEY.p8`";

/// The encryption scheme of an `EncryptedPrivateKeyInfo` (RFC 5958 §3), named, when it is one
/// Estuary cannot decrypt: PBES1 (PKCS#5 and PKCS#12 PBE) or PBES2 with a cipher other than
/// AES-CBC. Read leniently (only the algorithm identifiers); `None` for a supported scheme or
/// one that cannot be read, which the strict parse then reports.
fn unsupported_encryption_scheme(der_bytes: &[u8]) -> Option<String> {
    use der::asn1::AnyRef;
    use der::Reader as _;
    use spki::AlgorithmIdentifierRef;
    const PBES2: &str = "1.2.840.113549.1.5.13";
    let outer = AnyRef::from_der(der_bytes).ok()?;
    let mut reader = der::SliceReader::new(outer.value()).ok()?;
    let alg: AlgorithmIdentifierRef<'_> = reader.decode().ok()?;
    let oid = alg.oid.to_string();
    if oid != PBES2 {
        let name = match oid.as_str() {
            "1.2.840.113549.1.5.1" => "PBES1 pbeWithMD2AndDES-CBC",
            "1.2.840.113549.1.5.3" => "PBES1 pbeWithMD5AndDES-CBC",
            "1.2.840.113549.1.5.4" => "PBES1 pbeWithMD2AndRC2-CBC",
            "1.2.840.113549.1.5.6" => "PBES1 pbeWithMD5AndRC2-CBC",
            "1.2.840.113549.1.5.10" => "PBES1 pbeWithSHA1AndDES-CBC",
            "1.2.840.113549.1.5.11" => "PBES1 pbeWithSHA1AndRC2-CBC",
            "1.2.840.113549.1.12.1.1" => "PKCS#12 PBE pbeWithSHAAnd128BitRC4",
            "1.2.840.113549.1.12.1.2" => "PKCS#12 PBE pbeWithSHAAnd40BitRC4",
            "1.2.840.113549.1.12.1.3" => {
                "PKCS#12 PBE pbeWithSHAAnd3-KeyTripleDES-CBC (PBE-SHA1-3DES)"
            }
            "1.2.840.113549.1.12.1.4" => "PKCS#12 PBE pbeWithSHAAnd2-KeyTripleDES-CBC",
            "1.2.840.113549.1.12.1.5" => "PKCS#12 PBE pbeWithSHAAnd128BitRC2-CBC",
            "1.2.840.113549.1.12.1.6" => "PKCS#12 PBE pbewithSHAAnd40BitRC2-CBC",
            _ => return Some(format!("an unknown scheme (OID {oid}), not PBES2")),
        };
        return Some(format!("{name} (OID {oid})"));
    }
    // PBES2-params: SEQUENCE { keyDerivationFunc, encryptionScheme } (RFC 8018 §A.4).
    let params = alg.parameters?;
    let mut reader = der::SliceReader::new(params.value()).ok()?;
    let _kdf: AlgorithmIdentifierRef<'_> = reader.decode().ok()?;
    let cipher: AlgorithmIdentifierRef<'_> = reader.decode().ok()?;
    let cipher_oid = cipher.oid.to_string();
    let name = match cipher_oid.as_str() {
        // AES-128/192/256-CBC: supported.
        "2.16.840.1.101.3.4.1.2" | "2.16.840.1.101.3.4.1.22" | "2.16.840.1.101.3.4.1.42" => {
            return None
        }
        "1.2.840.113549.3.7" => "PBES2 with DES-EDE3-CBC (3DES)",
        "1.3.14.3.2.7" => "PBES2 with DES-CBC",
        "1.2.840.113549.3.2" => "PBES2 with RC2-CBC",
        _ => "PBES2 with a cipher other than AES-CBC",
    };
    Some(format!("{name} (OID {cipher_oid})"))
}

/// What a failed decryption of an encrypted PKCS#8 key means. The PBES2 schemes it supports
/// (PBKDF2 or scrypt with AES-CBC) fail only on the padding check, which a wrong password
/// fails (pkcs5 reports it as "encryption failed"); a decryption that yields no DER is a wrong
/// password too; anything else is a scheme it does not support.
fn decrypt_error(path: &Path, e: &pkcs8::Error) -> CaError {
    use pkcs8::pkcs5::Error as Pkcs5;
    match e {
        pkcs8::Error::EncryptedPrivateKey(Pkcs5::EncryptFailed | Pkcs5::DecryptFailed)
        | pkcs8::Error::Asn1(_) => bad(path, WRONG_PASSWORD),
        pkcs8::Error::EncryptedPrivateKey(other) => bad(
            path,
            format!(
                "cannot decrypt the key: its encryption scheme is not supported ({other}); {REENCRYPT}"
            ),
        ),
        other => bad(path, format!("cannot decrypt the key: {other}")),
    }
}

/// Creates a new self-signed root (20 years) in `root_dir` (`root-key.pem` 0600,
/// `root-cert.pem`) and an issuing CA under it (10 years, never past the root; basicConstraints
/// CA:TRUE pathlen:1 and keyUsage keyCertSign+cRLSign+digitalSignature, both critical; SKI;
/// AKI = the root's SKI, RFC 5280 §4.2.1.1-3 and §4.2.1.9). pathlen 1 leaves room for the
/// `edge-ca` profile's CA:TRUE pathlen:0 certificates. Writes the issuing CA's key to
/// `data_dir/ca-key.pem` and `data_dir/ca-cert.pem` = [intermediate, root]. Refuses when a CA
/// already exists in `data_dir` or a root in `root_dir`.
pub fn create_intermediate_ca(
    data_dir: &Path,
    root_dir: &Path,
    key: KeyChoice,
) -> Result<IntermediateCa, CaError> {
    create_intermediate_ca_with_key(data_dir, root_dir, key, None)
}

/// [`create_intermediate_ca`], with the issuing CA's key made in the PKCS#11 token `token`
/// when given (only `ca-cert.pem` is then written to `data_dir`; the offline root's key is a
/// file in `root_dir` as always, to be moved offline). The checks that nothing is replaced
/// run before the key is made in the token.
pub fn create_intermediate_ca_with_key(
    data_dir: &Path,
    root_dir: &Path,
    key: KeyChoice,
    token: Option<&Pkcs11Uri>,
) -> Result<IntermediateCa, CaError> {
    refuse_existing(data_dir)?;
    let root_key_path = root_dir.join(ROOT_KEY_FILE);
    let root_cert_path = root_dir.join(ROOT_CERT_FILE);
    for p in [&root_key_path, &root_cert_path] {
        if p.exists() {
            return Err(bad(
                p,
                "a root CA already exists here; refusing to replace it",
            ));
        }
    }
    let mut suffix = [0u8; 3];
    aws_lc_rs::rand::fill(&mut suffix).map_err(|_| CaError::Key("no randomness".into()))?;
    let tag = hex_lower(&suffix);

    let root_signer = FileKeySigner::new(key.generate()?)?;
    let root_subject = Name::from_str(&format!("CN=Estuary Offline Root CA {tag},O=Estuary"))?;
    let root = self_signed_root(&root_signer, root_subject, ROOT_VALIDITY)?;
    let root_der = root.to_der()?;
    let root_ski = subject_key_identifier(&root.tbs_certificate.subject_public_key_info);

    let (signer, key_pem): (Arc<dyn CaSigner>, _) = match token {
        Some(uri) => (Arc::new(Pkcs11Signer::generate(uri, key)?), None),
        None => {
            let signer = FileKeySigner::new(key.generate()?)?;
            let key_pem = signer.to_pem();
            (Arc::new(signer), Some(key_pem))
        }
    };
    let spki = SubjectPublicKeyInfoOwned::from_der(signer.public_key_der())?;
    let ski = subject_key_identifier(&spki);
    let extensions = vec![
        extension(
            rfc5280::ID_CE_BASIC_CONSTRAINTS,
            true,
            &BasicConstraints {
                ca: true,
                path_len_constraint: Some(1),
            },
        )?,
        extension(
            rfc5280::ID_CE_KEY_USAGE,
            true,
            &KeyUsage(KeyUsages::KeyCertSign | KeyUsages::CRLSign | KeyUsages::DigitalSignature),
        )?,
        extension(
            rfc5280::ID_CE_SUBJECT_KEY_IDENTIFIER,
            false,
            &SubjectKeyIdentifier(OctetString::new(ski)?),
        )?,
        extension(
            rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(root_ski)?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?,
    ];
    let now = SystemTime::UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        );
    let root_not_after = root.tbs_certificate.validity.not_after.to_system_time();
    let not_after = (now + INTERMEDIATE_VALIDITY).min(root_not_after);
    let (_intermediate, intermediate_der) = sign_certificate(
        &root_signer,
        &root.tbs_certificate.subject,
        Name::from_str(&format!("CN=Estuary Issuing CA {tag},O=Estuary"))?,
        spki,
        random_serial()?,
        now - Duration::from_secs(60),
        not_after,
        extensions,
    )?;
    let chain = vec![intermediate_der, root_der.clone()];
    let ca = CertificateAuthority::new(signer, chain.clone())?;

    crate::bootstrap::create_private_dir(root_dir)?;
    write_atomic(&root_key_path, root_signer.to_pem().as_bytes(), 0o600)?;
    write_atomic(
        &root_cert_path,
        pem_certificates(std::slice::from_ref(&root_der)).as_bytes(),
        0o644,
    )?;
    crate::bootstrap::create_private_dir(data_dir)?;
    if let Some(key_pem) = &key_pem {
        write_atomic(&data_dir.join(CA_KEY_FILE), key_pem.as_bytes(), 0o600)?;
    }
    write_atomic(
        &data_dir.join(CA_CERT_FILE),
        pem_certificates(&chain).as_bytes(),
        0o644,
    )?;
    Ok(IntermediateCa {
        ca,
        root_key_path,
        root_cert_path,
    })
}

/// Summarizes each certificate of a PEM file (for `estuary ca show`).
pub fn summarize_pem_file(path: &Path) -> Result<Vec<CertificateSummary>, CaError> {
    read_certificates(path)?
        .iter()
        .map(|der| summarize(der, path))
        .collect()
}

fn summarize(der: &[u8], path: &Path) -> Result<CertificateSummary, CaError> {
    let cert = parse_certificate(der, path)?;
    let bc = basic_constraints(&cert, path)?;
    let tbs = &cert.tbs_certificate;
    Ok(CertificateSummary {
        subject: tbs.subject.to_string(),
        issuer: tbs.issuer.to_string(),
        serial_hex: hex_lower(tbs.serial_number.as_bytes()),
        not_before: tbs.validity.not_before.to_system_time(),
        not_after: tbs.validity.not_after.to_system_time(),
        sha256_fingerprint: thumbprint_sha256(der),
        is_ca: bc.as_ref().is_some_and(|b| b.ca),
        path_len: bc.and_then(|b| b.path_len_constraint),
        self_issued: tbs.issuer == tbs.subject,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::process::Command;

    use super::*;
    use crate::bootstrap::load_ca;

    /// Runs a shell script with openssl in `dir` (fails, never skips, without openssl).
    fn sh(dir: &Path, script: &str) -> String {
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(dir)
            .output()
            .expect("bash");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "`{script}` failed:\n{text}");
        text
    }

    /// An enterprise-style PKI made by openssl: root, intermediate (pathlen:1), a leaf, and
    /// the intermediate key in several encodings.
    fn enterprise_pki(dir: &Path) {
        sh(
            dir,
            r#"
            command -v openssl >/dev/null || { echo "openssl is required for these tests"; exit 1; }
            cat > ca.ext <<'X'
[inter]
basicConstraints=critical,CA:TRUE,pathlen:1
keyUsage=critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
[leaf]
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
X
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out root.key
            openssl req -x509 -new -key root.key -subj "/O=Example Corp/CN=Example Root CA" -days 3650 -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out root.pem
            openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out inter.key
            openssl pkcs8 -topk8 -v2 aes-256-cbc -passout pass:secret -in inter.key -out inter.enc.key
            openssl ec -in inter.key -out inter.sec1.key 2>/dev/null
            openssl req -new -key inter.key -subj "/O=Example Corp/CN=Example Issuing CA" -out inter.csr
            openssl x509 -req -in inter.csr -CA root.pem -CAkey root.key -CAcreateserial -days 1825 -extfile ca.ext -extensions inter -out inter.pem 2>/dev/null
            openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out leaf.key
            openssl rsa -in leaf.key -traditional -out leaf.pkcs1.key 2>/dev/null
            openssl req -new -key leaf.key -subj "/CN=not a ca" -out leaf.csr
            openssl x509 -req -in leaf.csr -CA inter.pem -CAkey inter.key -CAcreateserial -days 30 -extfile ca.ext -extensions leaf -out leaf.pem 2>/dev/null
            printf 'secret\n' > pass.txt
            printf 'wrong\n' > wrong.txt
            grep -q "BEGIN EC PRIVATE KEY" inter.sec1.key
            grep -q "BEGIN RSA PRIVATE KEY" leaf.pkcs1.key
            grep -q "BEGIN ENCRYPTED PRIVATE KEY" inter.enc.key
            "#,
        );
    }

    #[test]
    fn imports_an_encrypted_intermediate_with_its_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        enterprise_pki(dir);
        let data = dir.join("data");
        let imported = import_ca(
            &data,
            &dir.join("inter.pem"),
            Some(&dir.join("root.pem")),
            &dir.join("inter.enc.key"),
            Some(&dir.join("pass.txt")),
        )
        .unwrap();
        assert!(imported.warnings.is_empty(), "{:?}", imported.warnings);
        assert_eq!(imported.ca.chain_der().len(), 2);
        let key_text = std::fs::read_to_string(data.join(CA_KEY_FILE)).unwrap();
        assert!(key_text.starts_with("-----BEGIN PRIVATE KEY-----"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(data.join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = load_ca(&data.join(CA_KEY_FILE), &data.join(CA_CERT_FILE)).unwrap();
        assert_eq!(loaded.chain_der(), imported.ca.chain_der());
        let summary = summarize_pem_file(&data.join(CA_CERT_FILE)).unwrap();
        assert!(summary[0].subject.contains("Example Issuing CA"));
        assert_eq!(summary[0].path_len, Some(1));
        assert!(summary[1].self_issued && summary[1].is_ca);

        // A second import into the same directory is refused.
        let err = import_ca(
            &data,
            &dir.join("inter.pem"),
            None,
            &dir.join("inter.key"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("already exists"), "{err}");
    }

    #[test]
    fn accepts_sec1_keys_and_a_full_chain_in_any_order() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        enterprise_pki(dir);
        sh(dir, "cat root.pem inter.pem > bundle.pem");
        let data = dir.join("data");
        let imported = import_ca(
            &data,
            &dir.join("inter.pem"),
            Some(&dir.join("bundle.pem")),
            &dir.join("inter.sec1.key"),
            None,
        )
        .unwrap();
        assert_eq!(imported.ca.chain_der().len(), 2);
        // The PKCS#1 key loads too (it belongs to a non-CA certificate, so only the key is read).
        read_private_key(&dir.join("leaf.pkcs1.key"), None).unwrap();
    }

    #[test]
    fn refusals_name_the_file_and_write_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        enterprise_pki(dir);
        let data = dir.join("data");
        // (certificate, chain, key, password file, expected error text)
        type Case<'a> = (&'a str, Option<&'a str>, &'a str, Option<&'a str>, &'a str);
        let cases: [Case<'_>; 6] = [
            (
                "inter.pem",
                Some("root.pem"),
                "inter.enc.key",
                Some("wrong.txt"),
                "wrong password for the encrypted key",
            ),
            (
                "inter.pem",
                Some("root.pem"),
                "inter.enc.key",
                None,
                "no password",
            ),
            (
                "inter.pem",
                Some("root.pem"),
                "root.key",
                None,
                "does not belong",
            ),
            (
                "leaf.pem",
                Some("inter.pem"),
                "leaf.key",
                None,
                "not a CA certificate",
            ),
            // The chain does not issue the certificate.
            (
                "root.pem",
                Some("inter.pem"),
                "root.key",
                None,
                "not in the chain",
            ),
            (
                "inter.pem",
                Some("root.pem"),
                "missing.key",
                None,
                "missing.key",
            ),
        ];
        for (cert, chain, key, pass, expect) in cases {
            let err = import_ca(
                &data,
                &dir.join(cert),
                chain.map(|c| dir.join(c)).as_deref(),
                &dir.join(key),
                pass.map(|p| dir.join(p)).as_deref(),
            )
            .unwrap_err()
            .to_string();
            assert!(err.contains(expect), "{cert}/{key}: {err}");
            // Regression: a wrong password read "PKCS#5 encryption failed".
            assert!(!err.contains("encryption failed"), "{cert}/{key}: {err}");
            assert!(!data.exists(), "{cert}/{key}: wrote something");
        }
        // A forged chain: a different root with the same name does not verify the signature.
        sh(
            dir,
            r#"openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out fake.key
               openssl req -x509 -new -key fake.key -subj "/O=Example Corp/CN=Example Root CA" -days 30 -addext "basicConstraints=critical,CA:TRUE" -out fake-root.pem"#,
        );
        let err = import_ca(
            &data,
            &dir.join("inter.pem"),
            Some(&dir.join("fake-root.pem")),
            &dir.join("inter.key"),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("fake-root.pem") && err.contains("did not issue"),
            "{err}"
        );
        assert!(!data.exists());
    }

    #[test]
    fn intermediate_under_a_new_root_verifies_with_openssl() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let data = dir.join("data");
        let root_dir = data.join("offline-root");
        let made = create_intermediate_ca(&data, &root_dir, KeyChoice::P256).unwrap();
        assert_eq!(made.ca.chain_der().len(), 2);
        let loaded = load_ca(&data.join(CA_KEY_FILE), &data.join(CA_CERT_FILE)).unwrap();
        assert_eq!(loaded.chain_der(), made.ca.chain_der());
        std::fs::write(
            dir.join("inter.pem"),
            pem_certificates(&made.ca.chain_der()[..1]),
        )
        .unwrap();
        let root = made.root_cert_path.display().to_string();
        let text = sh(
            dir,
            &format!(
                "openssl verify -CAfile {root} inter.pem && openssl x509 -in inter.pem -noout -text"
            ),
        );
        assert!(text.contains("inter.pem: OK"), "{text}");
        assert!(text.contains("CA:TRUE, pathlen:1"), "{text}");
        assert!(
            text.contains("Certificate Sign, CRL Sign") && text.contains("Digital Signature"),
            "{text}"
        );
        assert!(text.contains("X509v3 Authority Key Identifier"), "{text}");
        assert!(create_intermediate_ca(&data, &root_dir, KeyChoice::P256).is_err());
        assert!(create_intermediate_ca(&dir.join("other"), &root_dir, KeyChoice::P256).is_err());
    }
}
