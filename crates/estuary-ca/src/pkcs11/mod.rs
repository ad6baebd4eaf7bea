//! A CA key inside a PKCS#11 token (an HSM, SoftHSM2): made there, used there, never on disk.
//!
//! [`Pkcs11Signer`] is a [`CaSigner`]: issuance and CRL signing go through it as through a file
//! key. The token is named by an RFC 7512 URI ([`Pkcs11Uri`]). One logged-in session per signer,
//! behind a mutex, does every signature; a session the token dropped (CKR_SESSION_HANDLE_INVALID,
//! CKR_DEVICE_ERROR, CKR_USER_NOT_LOGGED_IN, ...) is reopened, logged in again and the signature
//! tried once more; if that fails too, [`CaError::KeyUnavailable`] says so (the server answers
//! 503). The PIN is held in memory that is wiped when dropped and is never logged or printed.

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use const_oid::db::rfc5912;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use der::asn1::{BitString, SequenceOf, UintRef};
use der::{Decode, Encode};
use spki::{AlgorithmIdentifierOwned, SubjectPublicKeyInfoOwned};
use zeroize::Zeroizing;

use crate::signer::signature_algorithm_for;
use crate::{CaError, CaSigner, KeyChoice};

mod uri;
pub use uri::{redact, Pkcs11Uri, UriError};

/// The environment variable naming the PKCS#11 library when the URI has no `module-path`.
pub const MODULE_ENV: &str = "ESTUARY_PKCS11_MODULE";

/// The curve or size of a token key, which decides how it signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenKeyKind {
    /// ECDSA P-256: CKM_ECDSA over a SHA-256 digest made here.
    P256,
    /// ECDSA P-384: CKM_ECDSA over a SHA-384 digest made here.
    P384,
    /// RSA PKCS#1 v1.5: CKM_SHA256_RSA_PKCS (the token hashes).
    Rsa,
}

/// A logged-in session and the key's handle in it.
struct OpenSession {
    session: Session,
    key: ObjectHandle,
}

/// A failure talking to the token: its message, and whether a new session may cure it.
struct TokenFailure {
    message: String,
    session_lost: bool,
    /// The token or its slot is gone, or the library lost its state: only the library
    /// initialized again may see the token again ([`Pkcs11Signer::reinitialize_library`]).
    token_gone: bool,
    /// The token refused the PIN: never log in with it again (a real HSM locks the PIN after a
    /// few failed logins).
    pin_rejected: bool,
}

impl From<CkError> for TokenFailure {
    fn from(e: CkError) -> Self {
        TokenFailure {
            session_lost: is_session_lost(&e),
            token_gone: is_token_gone(&e),
            message: e.to_string(),
            pin_rejected: false,
        }
    }
}

/// Errors after which the session (or the login) is gone but the token may be back: reopen,
/// log in again and retry once.
fn is_session_lost(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::DeviceError
                | RvError::GeneralError
                | RvError::FunctionFailed
                | RvError::DeviceRemoved
                | RvError::DeviceMemory
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

/// Errors that say the token (or the library's view of it) is gone, not just a session.
fn is_token_gone(e: &CkError) -> bool {
    matches!(
        e,
        CkError::Pkcs11(
            RvError::SlotIdInvalid
                // "An unrecoverable error": SoftHSM2's answer to a login once its token
                // directory vanished under it.
                | RvError::GeneralError
                | RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::CryptokiNotInitialized,
            _
        )
    )
}

/// A CA key in a PKCS#11 token.
pub struct Pkcs11Signer {
    uri: Pkcs11Uri,
    context: Pkcs11,
    /// The token's slot; found again when the library is initialized again (a slot's number
    /// may change), under the session lock.
    slot: Mutex<Slot>,
    /// The serial number of the token the key was opened in: after the library is initialized
    /// again, only that token is logged in to (another with the same label must not get the
    /// PIN).
    token_serial: String,
    pin: AuthPin,
    kind: TokenKeyKind,
    /// The key's CKA_ID and CKA_LABEL as found, to find it again in a new session.
    key_id: Vec<u8>,
    key_label: Vec<u8>,
    spki_der: Vec<u8>,
    algorithm: AlgorithmIdentifierOwned,
    session: Mutex<Option<OpenSession>>,
    /// How many times a lost session was replaced.
    sessions_reopened: AtomicU64,
    /// How many times the PKCS#11 library was finalized and initialized again because the key
    /// stayed unavailable ([`CaSigner::recheck`]).
    library_reinitialized: AtomicU64,
    /// Whether the last call into the token failed because the token itself was gone
    /// ([`is_token_gone`]): only then is the library initialized again.
    token_gone: std::sync::atomic::AtomicBool,
    /// Why the token refused the PIN, once it has: every later signature fails at once,
    /// without another login, until a restart with a corrected PIN.
    pin_refused: Mutex<Option<String>>,
    /// Why the last signature found the token unavailable; `None` once one succeeds
    /// ([`CaSigner::unavailable`], `/readyz`).
    last_unavailable: Mutex<Option<String>>,
    /// When the call into the token now in progress began (a hung token is reported once
    /// this is [`TOKEN_CALL_HUNG_AFTER`] old).
    token_call_since: Mutex<Option<Instant>>,
}

/// How long a call into the token may go unanswered before the key is reported unavailable
/// (an enrollment waits this long for its signature too).
const TOKEN_CALL_HUNG_AFTER: std::time::Duration = std::time::Duration::from_secs(10);

impl fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Signer")
            .field("key", &self.uri.describe())
            .field("slot", &self.slot.lock().map(|s| s.id()).ok())
            .field("algorithm", &self.algorithm.oid)
            .finish_non_exhaustive()
    }
}

fn token_error(uri: &Pkcs11Uri, problem: impl fmt::Display) -> CaError {
    CaError::Token(format!("{}: {problem}", uri.describe()))
}

/// The loaded PKCS#11 libraries, by path: C_Initialize may run once per process and library.
fn context_for(uri: &Pkcs11Uri) -> Result<Pkcs11, CaError> {
    static CONTEXTS: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    let module = match &uri.module_path {
        Some(p) => p.clone(),
        None => std::env::var_os(MODULE_ENV)
            .map(PathBuf::from)
            .ok_or_else(|| {
                token_error(
                    uri,
                    format!(
                        "no PKCS#11 library: add module-path=/path/to/library.so to the URI or set {MODULE_ENV}"
                    ),
                )
            })?,
    };
    let contexts = CONTEXTS.get_or_init(Mutex::default);
    let mut contexts = contexts
        .lock()
        .map_err(|_| token_error(uri, "the PKCS#11 library table is poisoned"))?;
    if let Some(ctx) = contexts.get(&module) {
        return Ok(ctx.clone());
    }
    if !module.is_file() {
        return Err(token_error(
            uri,
            format!(
                "PKCS#11 library {} does not exist (for SoftHSM2: apt-get install softhsm2)",
                module.display()
            ),
        ));
    }
    let ctx = Pkcs11::new(&module).map_err(|e| {
        token_error(
            uri,
            format!("cannot load PKCS#11 library {}: {e}", module.display()),
        )
    })?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => {
            return Err(token_error(
                uri,
                format!(
                    "PKCS#11 library {} did not initialize: {e}",
                    module.display()
                ),
            ))
        }
    }
    contexts.insert(module, ctx.clone());
    Ok(ctx)
}

/// The slot whose token matches the URI's `token`, `manufacturer`, `model`, `serial` and
/// `slot-id` (RFC 7512 §2.3: attributes not given match anything). Exactly one must match.
fn find_slot(ctx: &Pkcs11, uri: &Pkcs11Uri) -> Result<Slot, CaError> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| token_error(uri, format!("cannot list the slots: {e}")))?;
    let mut seen = Vec::new();
    let mut matching = Vec::new();
    for slot in slots {
        let info = match ctx.get_token_info(slot) {
            Ok(info) => info,
            Err(_) => continue,
        };
        let label = info.label().trim_end().to_string();
        seen.push(format!("{label:?} (slot {})", slot.id()));
        let fits = |want: &Option<String>, have: &str| {
            want.as_deref().is_none_or(|w| w == have.trim_end())
        };
        if fits(&uri.token, info.label())
            && fits(&uri.manufacturer, info.manufacturer_id())
            && fits(&uri.model, info.model())
            && fits(&uri.serial, info.serial_number())
            && uri.slot_id.is_none_or(|id| id == slot.id())
        {
            matching.push(slot);
        }
    }
    match matching.as_slice() {
        [slot] => Ok(*slot),
        [] => Err(CaError::KeyUnavailable(format!(
            "{}: no such token (tokens present: {})",
            uri.describe(),
            if seen.is_empty() {
                "none".to_string()
            } else {
                seen.join(", ")
            }
        ))),
        many => Err(token_error(
            uri,
            format!(
                "{} tokens match; name one with token=, serial= or slot-id= (tokens present: {})",
                many.len(),
                seen.join(", ")
            ),
        )),
    }
}

/// The user PIN: the first line of the `pin-source` file, or the URI's `pin-value`.
fn read_pin(uri: &Pkcs11Uri) -> Result<AuthPin, CaError> {
    if let Some(value) = uri.pin_value() {
        tracing::warn!(
            key = %uri.describe(),
            "the PKCS#11 URI carries the PIN (pin-value): it is readable wherever the URI is written; prefer pin-source=file:/path (mode 0600)"
        );
        return Ok(AuthPin::from(value.as_str()));
    }
    let Some(path) = &uri.pin_source else {
        return Err(token_error(
            uri,
            "no PIN: add pin-source=file:/ABSOLUTE/PATH to the URI (a file, mode 0600, whose first line is the user PIN)",
        ));
    };
    let unreadable = |e: std::io::Error| {
        token_error(
            uri,
            format!("cannot read the PIN file {}: {e}", path.display()),
        )
    };
    // Opening a FIFO would wait for a writer for ever: a regular file only (checked again on
    // the open file).
    let not_a_file = || {
        token_error(
            uri,
            format!("the PIN file {} is not a regular file", path.display()),
        )
    };
    if !std::fs::metadata(path).map_err(unreadable)?.is_file() {
        return Err(not_a_file());
    }
    // One open file for the checks and the read: no window in which the path could be swapped.
    let mut file = std::fs::File::open(path).map_err(unreadable)?;
    {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let meta = file.metadata().map_err(unreadable)?;
        if !meta.is_file() {
            return Err(not_a_file());
        }
        let mode = meta.permissions().mode();
        // Anyone who can read it can sign as the CA wherever the token is reachable; anyone
        // who can write it can plant a wrong PIN (and lock the token's PIN).
        if mode & 0o027 != 0 {
            return Err(token_error(
                uri,
                format!(
                    "the PIN file {} is {} by other users (mode {:o}); make it mode 0600 (or 0640 for a service group)",
                    path.display(),
                    if mode & 0o022 != 0 { "writable" } else { "readable" },
                    mode & 0o777
                ),
            ));
        }
        // Owned by this user or root: another user could rewrite it.
        let me = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
        if meta.uid() != 0 && me.is_some_and(|uid| uid != meta.uid()) {
            return Err(token_error(
                uri,
                format!(
                    "the PIN file {} belongs to another user (uid {}); it must be this service's or root's",
                    path.display(),
                    meta.uid()
                ),
            ));
        }
        if mode & 0o040 != 0 {
            tracing::warn!(
                path = %path.display(),
                "the PKCS#11 PIN file is readable by its group; make it mode 0600 unless that group is the service's"
            );
        }
    }
    let mut text = Zeroizing::new(String::new());
    {
        use std::io::Read as _;
        file.read_to_string(&mut text).map_err(unreadable)?;
    }
    let first = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if first.is_empty() {
        return Err(token_error(
            uri,
            format!("the PIN file {} is empty", path.display()),
        ));
    }
    Ok(AuthPin::from(first))
}

/// The DER of a named-curve OID, as CKA_EC_PARAMS holds it (RFC 5480 §2.1.1).
fn ec_params(curve: const_oid::ObjectIdentifier) -> Result<Vec<u8>, CaError> {
    Ok(curve.to_der()?)
}

impl Pkcs11Signer {
    /// Opens the key the URI names: finds the token, logs in with the PIN, finds the private
    /// key (CKA_CLASS private key, CKA_LABEL = `object`, CKA_ID = `id`) and the public key
    /// beside it (same CKA_ID, else same CKA_LABEL), and checks with one signature that they
    /// belong together.
    pub fn open(uri: &Pkcs11Uri) -> Result<Self, CaError> {
        let context = context_for(uri)?;
        let slot = find_slot(&context, uri)?;
        let token_serial = context
            .get_token_info(slot)
            .map_err(|e| token_error(uri, format!("cannot read the token's information: {e}")))?
            .serial_number()
            .trim_end()
            .to_string();
        let pin = read_pin(uri)?;
        let session = open_logged_in(&context, slot, &pin).map_err(|f| login_error(uri, f))?;
        let key = find_private_key(&session, uri, None, None)?;
        let found = session
            .get_attributes(
                key,
                &[
                    AttributeType::KeyType,
                    AttributeType::Id,
                    AttributeType::Label,
                ],
            )
            .map_err(|e| token_error(uri, format!("cannot read the key's attributes: {e}")))?;
        let mut key_type = None;
        let mut key_id = Vec::new();
        let mut key_label = Vec::new();
        for attribute in found {
            match attribute {
                Attribute::KeyType(t) => key_type = Some(t),
                Attribute::Id(id) => key_id = id,
                Attribute::Label(label) => key_label = label,
                _ => {}
            }
        }
        let public = find_public_key(&session, uri, &key_id, &key_label)?;
        let (kind, spki) = match key_type {
            Some(t) if t == KeyType::EC => ec_public_key(&session, uri, public)?,
            Some(t) if t == KeyType::RSA => (TokenKeyKind::Rsa, rsa_public_key(&session, uri, public)?),
            Some(other) => {
                return Err(token_error(
                    uri,
                    format!("the key is of type {other}; only EC (P-256, P-384) and RSA keys can sign certificates here"),
                ))
            }
            None => return Err(token_error(uri, "the token does not say the key's type")),
        };
        let algorithm = signature_algorithm_for(&spki)?;
        let signer = Pkcs11Signer {
            uri: uri.clone(),
            context,
            slot: Mutex::new(slot),
            token_serial,
            pin,
            kind,
            key_id,
            key_label,
            spki_der: spki.to_der()?,
            algorithm,
            session: Mutex::new(Some(OpenSession { session, key })),
            sessions_reopened: AtomicU64::new(0),
            library_reinitialized: AtomicU64::new(0),
            token_gone: std::sync::atomic::AtomicBool::new(false),
            pin_refused: Mutex::new(None),
            last_unavailable: Mutex::new(None),
            token_call_since: Mutex::new(None),
        };
        signer.check_key_pair()?;
        tracing::info!(key = %uri.describe(), slot = slot.id(), "CA key opened in the PKCS#11 token");
        Ok(signer)
    }

    /// Makes a new key pair of type `choice` in the token (P-256, P-384 or RSA; not Ed25519),
    /// labelled `object` (required) with CKA_ID `id` (or 16 random bytes): the private key
    /// CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, not CKA_EXTRACTABLE, CKA_SIGN; the public key on
    /// the token too. Refuses when the token already has an object with that label or id:
    /// a CA key is never replaced.
    pub fn generate(uri: &Pkcs11Uri, choice: KeyChoice) -> Result<Self, CaError> {
        let label = uri.object.clone().ok_or_else(|| {
            token_error(uri, "a new key needs a label: add object=LABEL to the URI")
        })?;
        let context = context_for(uri)?;
        let slot = find_slot(&context, uri)?;
        let pin = read_pin(uri)?;
        let session = open_logged_in(&context, slot, &pin).map_err(|f| login_error(uri, f))?;
        let taken = |template: &[Attribute]| {
            session
                .find_objects(template)
                .map(|found| !found.is_empty())
                .map_err(|e| token_error(uri, format!("cannot search the token: {e}")))
        };
        if taken(&[Attribute::Label(label.as_bytes().to_vec())])? {
            return Err(token_error(
                uri,
                format!("the token already has an object labelled {label:?}; refusing to make another CA key under that name (choose another object=, or use `estuary ca import --key-uri` for an existing key)"),
            ));
        }
        let id = match &uri.id {
            Some(id) => {
                if taken(&[Attribute::Id(id.clone())])? {
                    return Err(token_error(
                        uri,
                        "the token already has an object with this id; refusing to make another",
                    ));
                }
                id.clone()
            }
            None => {
                let mut id = vec![0u8; 16];
                aws_lc_rs::rand::fill(&mut id).map_err(|_| CaError::Key("no randomness".into()))?;
                id
            }
        };
        let common = |class: ObjectClass| {
            vec![
                Attribute::Class(class),
                Attribute::Token(true),
                Attribute::Label(label.as_bytes().to_vec()),
                Attribute::Id(id.clone()),
            ]
        };
        let mut public = common(ObjectClass::PUBLIC_KEY);
        // A CA key signs and nothing else (RFC 5280 §4.2.1.3 keyCertSign, cRLSign).
        public.extend([
            Attribute::Verify(true),
            Attribute::Private(false),
            Attribute::Encrypt(false),
            Attribute::Wrap(false),
        ]);
        let mut private = common(ObjectClass::PRIVATE_KEY);
        private.extend([
            Attribute::Private(true),
            Attribute::Sensitive(true),
            Attribute::Extractable(false),
            Attribute::Sign(true),
            Attribute::Decrypt(false),
            Attribute::Unwrap(false),
            Attribute::Derive(false),
        ]);
        let mechanism = match choice {
            KeyChoice::P256 | KeyChoice::P384 => {
                let curve = if choice == KeyChoice::P256 {
                    rfc5912::SECP_256_R_1
                } else {
                    rfc5912::SECP_384_R_1
                };
                public.push(Attribute::EcParams(ec_params(curve)?));
                private.push(Attribute::KeyType(KeyType::EC));
                public.push(Attribute::KeyType(KeyType::EC));
                Mechanism::EccKeyPairGen
            }
            KeyChoice::Rsa2048 | KeyChoice::Rsa3072 | KeyChoice::Rsa4096 => {
                let bits: u64 = match choice {
                    KeyChoice::Rsa2048 => 2048,
                    KeyChoice::Rsa3072 => 3072,
                    _ => 4096,
                };
                public.extend([
                    Attribute::ModulusBits(bits.into()),
                    Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                    Attribute::KeyType(KeyType::RSA),
                ]);
                private.push(Attribute::KeyType(KeyType::RSA));
                Mechanism::RsaPkcsKeyPairGen
            }
            KeyChoice::Ed25519 => {
                return Err(token_error(
                    uri,
                    "Ed25519 CA keys are not made in PKCS#11 tokens here; choose p256, p384, rsa2048, rsa3072 or rsa4096",
                ))
            }
        };
        session
            .generate_key_pair(&mechanism, &public, &private)
            .map_err(|e| {
                token_error(uri, format!("the token could not make a {choice} key: {e}"))
            })?;
        tracing::info!(key = %uri.describe(), key_type = %choice, "CA key made in the PKCS#11 token");
        drop(session);
        // Opened like any existing key: by its label and the id just given.
        let mut made = uri.clone();
        made.id = Some(id);
        Pkcs11Signer::open(&made).map(|mut signer| {
            signer.uri = uri.clone();
            signer
        })
    }

    /// The URI this key was opened with (Display hides a `pin-value`).
    pub fn uri(&self) -> &Pkcs11Uri {
        &self.uri
    }

    /// How many times a session the token lost was replaced by a new one since the key was
    /// opened.
    pub fn sessions_reopened(&self) -> u64 {
        self.sessions_reopened.load(Ordering::Relaxed)
    }

    /// How many times the PKCS#11 library was initialized again since the key was opened.
    pub fn library_reinitialized(&self) -> u64 {
        self.library_reinitialized.load(Ordering::Relaxed)
    }

    /// Finalizes the PKCS#11 library and initializes it again (PKCS#11 §5.4: C_Finalize ends
    /// every session of the process; C_Initialize starts afresh), then finds the token's slot
    /// again. A library whose state broke with its token (SoftHSM2 after its token directory
    /// was removed and put back, a network HSM's client after its connection was lost for
    /// good) only sees the token again this way, which otherwise takes a restart. Called with
    /// the session lock held (`session`), so no signature of this key is inside the library;
    /// the process has one CA key, so no other key's session is either.
    fn reinitialize_library(&self, session: &mut Option<OpenSession>) -> Result<(), CaError> {
        // Closing a session of a finalized library fails harmlessly; close it first.
        *session = None;
        let _ = self.context.clone().finalize();
        match self
            .context
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => {
                return Err(CaError::KeyUnavailable(format!(
                    "{}: the PKCS#11 library did not initialize again: {e}",
                    self.uri.describe()
                )))
            }
        }
        self.library_reinitialized.fetch_add(1, Ordering::Relaxed);
        // The token the key was opened in, by its serial number too: another token with the
        // same label (a spare, a token initialized again) is never logged in to.
        let mut the_same_token = self.uri.clone();
        the_same_token.serial = Some(self.token_serial.clone());
        let slot = find_slot(&self.context, &the_same_token).map_err(|e| match e {
            CaError::KeyUnavailable(_) => e,
            other => CaError::KeyUnavailable(other.to_string()),
        })?;
        if let Ok(mut current) = self.slot.lock() {
            *current = slot;
        }
        Ok(())
    }

    /// Signs a test message and verifies it with the public key read from the token: the
    /// public key object (which the CA certificate is matched against) must belong to the
    /// private key that signs.
    fn check_key_pair(&self) -> Result<(), CaError> {
        let message = b"estuary: does the token's public key belong to its private key?";
        let signature = self.sign(message)?;
        let spki = SubjectPublicKeyInfoOwned::from_der(&self.spki_der)?;
        estuary_wire::signature::verify(&spki, &self.algorithm, message, &signature).map_err(
            |e| {
                token_error(
                    &self.uri,
                    format!("the public key beside the private key does not verify its signatures ({e}); they are not one key pair"),
                )
            },
        )?;
        Ok(())
    }

    /// One signature in the session in `slot`, opening (and logging in) a session first when
    /// there is none.
    fn sign_in(
        &self,
        slot: &mut Option<OpenSession>,
        mechanism: &Mechanism<'_>,
        data: &[u8],
    ) -> Result<Vec<u8>, TokenFailure> {
        let signed = self.sign_in_once(slot, mechanism, data);
        self.token_gone.store(
            signed.as_ref().is_err_and(|failure| failure.token_gone),
            Ordering::Relaxed,
        );
        signed
    }

    /// [`Self::sign_in`]'s work; it records whether a failure was the token's being gone.
    fn sign_in_once(
        &self,
        slot: &mut Option<OpenSession>,
        mechanism: &Mechanism<'_>,
        data: &[u8],
    ) -> Result<Vec<u8>, TokenFailure> {
        if slot.is_none() {
            let slot_now = *self.slot.lock().map_err(|_| TokenFailure {
                message: "slot lock poisoned".into(),
                session_lost: false,
                token_gone: false,
                pin_rejected: false,
            })?;
            let session = open_logged_in(&self.context, slot_now, &self.pin)?;
            let key = find_private_key(
                &session,
                &self.uri,
                Some(&self.key_id),
                Some(&self.key_label),
            )
            .map_err(|e| TokenFailure {
                message: e.to_string(),
                session_lost: false,
                token_gone: false,
                pin_rejected: false,
            })?;
            *slot = Some(OpenSession { session, key });
        }
        let open = slot.as_ref().ok_or_else(|| TokenFailure {
            message: "no session".into(),
            session_lost: true,
            token_gone: false,
            pin_rejected: false,
        })?;
        Ok(open.session.sign(mechanism, open.key, data)?)
    }
}

fn login_error(uri: &Pkcs11Uri, failure: TokenFailure) -> CaError {
    if failure.pin_rejected {
        return CaError::PinRefused(format!("{}: {}", uri.describe(), failure.message));
    }
    if failure.session_lost {
        CaError::KeyUnavailable(format!("{}: {}", uri.describe(), failure.message))
    } else {
        token_error(uri, failure.message)
    }
}

/// A read-write session on `slot`, logged in as the user. The login belongs to the
/// application, not the session (PKCS#11 §5.6): "already logged in" is fine.
fn open_logged_in(ctx: &Pkcs11, slot: Slot, pin: &AuthPin) -> Result<Session, TokenFailure> {
    let session = ctx.open_rw_session(slot)?;
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(session),
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => Err(TokenFailure {
            message: "the token refused the PIN (CKR_PIN_INCORRECT); check the pin-source file".into(),
            session_lost: false,
            token_gone: false,
            pin_rejected: true,
        }),
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(TokenFailure {
            message: "the user PIN is locked (CKR_PIN_LOCKED); the token's security officer must reset it".into(),
            session_lost: false,
            token_gone: false,
            pin_rejected: true,
        }),
        Err(CkError::Pkcs11(RvError::PinExpired, _)) => Err(TokenFailure {
            message: "the user PIN has expired (CKR_PIN_EXPIRED); set a new one".into(),
            session_lost: false,
            token_gone: false,
            pin_rejected: true,
        }),
        Err(e) => Err(e.into()),
    }
}

fn find_private_key(
    session: &Session,
    uri: &Pkcs11Uri,
    id: Option<&[u8]>,
    label: Option<&[u8]>,
) -> Result<ObjectHandle, CaError> {
    let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
    match (id, label) {
        (Some(id), Some(label)) => {
            if !id.is_empty() {
                template.push(Attribute::Id(id.to_vec()));
            }
            if !label.is_empty() {
                template.push(Attribute::Label(label.to_vec()));
            }
        }
        _ => {
            if let Some(object) = &uri.object {
                template.push(Attribute::Label(object.as_bytes().to_vec()));
            }
            if let Some(id) = &uri.id {
                template.push(Attribute::Id(id.clone()));
            }
        }
    }
    let found = session
        .find_objects(&template)
        .map_err(|e| token_error(uri, format!("cannot search the token: {e}")))?;
    match found.as_slice() {
        [key] => Ok(*key),
        [] => Err(token_error(
            uri,
            "no private key by that name in the token (list them with `pkcs11-tool --module LIB --login --list-objects`)",
        )),
        many => Err(token_error(
            uri,
            format!("{} private keys match; add id= to the URI to name one", many.len()),
        )),
    }
}

fn find_public_key(
    session: &Session,
    uri: &Pkcs11Uri,
    id: &[u8],
    label: &[u8],
) -> Result<ObjectHandle, CaError> {
    let by = |attribute: Attribute| {
        session
            .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY), attribute])
            .map_err(|e| token_error(uri, format!("cannot search the token: {e}")))
    };
    let mut found = if id.is_empty() {
        Vec::new()
    } else {
        by(Attribute::Id(id.to_vec()))?
    };
    if found.is_empty() && !label.is_empty() {
        found = by(Attribute::Label(label.to_vec()))?;
    }
    match found.as_slice() {
        [key] => Ok(*key),
        [] => Err(token_error(
            uri,
            "the token has no public key object beside the private key (same CKA_ID or CKA_LABEL); Estuary reads the CA's public key from it",
        )),
        many => Err(token_error(
            uri,
            format!("{} public keys have the private key's id or label; cannot tell which is its own", many.len()),
        )),
    }
}

/// SubjectPublicKeyInfo of an EC public key object: id-ecPublicKey with the named curve of
/// CKA_EC_PARAMS, and the point of CKA_EC_POINT (RFC 5480 §2). PKCS#11 says CKA_EC_POINT is
/// the DER OCTET STRING of the point (SoftHSM returns it so); some tokens give the bare point.
fn ec_public_key(
    session: &Session,
    uri: &Pkcs11Uri,
    public: ObjectHandle,
) -> Result<(TokenKeyKind, SubjectPublicKeyInfoOwned), CaError> {
    let attributes = session
        .get_attributes(public, &[AttributeType::EcParams, AttributeType::EcPoint])
        .map_err(|e| token_error(uri, format!("cannot read the public key: {e}")))?;
    let (mut params, mut point) = (None, None);
    for attribute in attributes {
        match attribute {
            Attribute::EcParams(p) => params = Some(p),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    let (Some(params), Some(point)) = (params, point) else {
        return Err(token_error(
            uri,
            "the EC public key lacks CKA_EC_PARAMS or CKA_EC_POINT",
        ));
    };
    let curve = const_oid::ObjectIdentifier::from_der(&params)
        .map_err(|_| token_error(uri, "the key's curve is not given as a named curve OID"))?;
    let (kind, coordinate_len) = if curve == rfc5912::SECP_256_R_1 {
        (TokenKeyKind::P256, 32)
    } else if curve == rfc5912::SECP_384_R_1 {
        (TokenKeyKind::P384, 48)
    } else {
        return Err(token_error(
            uri,
            format!("the key's curve {curve} is not P-256 or P-384"),
        ));
    };
    let uncompressed_len = 1 + 2 * coordinate_len;
    let point = if point.len() == uncompressed_len && point.first() == Some(&0x04) {
        point
    } else {
        der::asn1::OctetString::from_der(&point)
            .map(der::asn1::OctetString::into_bytes)
            .map_err(|_| token_error(uri, "CKA_EC_POINT is neither an OCTET STRING nor a point"))?
    };
    if point.len() != uncompressed_len || point.first() != Some(&0x04) {
        return Err(token_error(
            uri,
            "CKA_EC_POINT is not an uncompressed point of its curve",
        ));
    }
    let spki = SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: rfc5912::ID_EC_PUBLIC_KEY,
            parameters: Some(der::Any::encode_from(&curve)?),
        },
        subject_public_key: BitString::from_bytes(&point)?,
    };
    Ok((kind, spki))
}

/// SubjectPublicKeyInfo of an RSA public key object: rsaEncryption, NULL parameters, and the
/// RSAPublicKey of CKA_MODULUS and CKA_PUBLIC_EXPONENT (RFC 3279 §2.3.1).
fn rsa_public_key(
    session: &Session,
    uri: &Pkcs11Uri,
    public: ObjectHandle,
) -> Result<SubjectPublicKeyInfoOwned, CaError> {
    let attributes = session
        .get_attributes(
            public,
            &[AttributeType::Modulus, AttributeType::PublicExponent],
        )
        .map_err(|e| token_error(uri, format!("cannot read the public key: {e}")))?;
    let (mut modulus, mut exponent) = (None, None);
    for attribute in attributes {
        match attribute {
            Attribute::Modulus(m) => modulus = Some(m),
            Attribute::PublicExponent(e) => exponent = Some(e),
            _ => {}
        }
    }
    let (Some(modulus), Some(exponent)) = (modulus, exponent) else {
        return Err(token_error(
            uri,
            "the RSA public key lacks CKA_MODULUS or CKA_PUBLIC_EXPONENT",
        ));
    };
    let mut rsa_public_key: SequenceOf<UintRef<'_>, 2> = SequenceOf::new();
    rsa_public_key.add(UintRef::new(&modulus)?)?;
    rsa_public_key.add(UintRef::new(&exponent)?)?;
    Ok(SubjectPublicKeyInfoOwned {
        algorithm: AlgorithmIdentifierOwned {
            oid: rfc5912::RSA_ENCRYPTION,
            parameters: Some(der::Any::from(der::asn1::Null)),
        },
        subject_public_key: BitString::from_bytes(&rsa_public_key.to_der()?)?,
    })
}

/// An ECDSA signature as PKCS#11 gives it (r and s, each the curve's size, big-endian,
/// PKCS#11 §2.3.1) as the DER `Ecdsa-Sig-Value` X.509 carries (RFC 5480 §2.2 / RFC 3279 §2.2.3).
fn ecdsa_der(raw: &[u8], coordinate_len: usize) -> Result<Vec<u8>, CaError> {
    if raw.len() != 2 * coordinate_len {
        return Err(CaError::Signing(format!(
            "the token's ECDSA signature is {} bytes, expected {}",
            raw.len(),
            2 * coordinate_len
        )));
    }
    let (r, s) = raw.split_at(coordinate_len);
    let mut value: SequenceOf<UintRef<'_>, 2> = SequenceOf::new();
    value.add(UintRef::new(r)?)?;
    value.add(UintRef::new(s)?)?;
    Ok(value.to_der()?)
}

impl CaSigner for Pkcs11Signer {
    fn public_key_der(&self) -> &[u8] {
        &self.spki_der
    }

    fn signature_algorithm(&self) -> AlgorithmIdentifierOwned {
        self.algorithm.clone()
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, CaError> {
        let mut session = self.session.lock().map_err(|_| {
            CaError::KeyUnavailable(format!("{}: session lock poisoned", self.uri.describe()))
        })?;
        // Checked with the session held: a signature that waited for it while another's login
        // was refused must not try the PIN again (an HSM locks it after a few tries).
        if let Some(why) = self.pin_refused.lock().ok().and_then(|r| r.clone()) {
            return Err(CaError::KeyUnavailable(format!(
                "{}: {why} (no further logins until a restart, so as not to lock the PIN)",
                self.uri.describe()
            )));
        }
        self.set_token_call_since(Some(Instant::now()));
        let result = self.sign_in_session(&mut session, message);
        self.set_token_call_since(None);
        // Still under the session lock, so that the outcomes are recorded in the order the
        // signatures were made (a late success must not hide a later failure).
        if let Ok(mut last) = self.last_unavailable.lock() {
            match &result {
                Ok(_) => *last = None,
                Err(CaError::KeyUnavailable(why)) => *last = Some(why.clone()),
                Err(_) => {}
            }
        }
        drop(session);
        result
    }

    /// A token signature is a call into a library that may wait on a device or a network.
    fn may_block(&self) -> bool {
        true
    }

    fn unavailable(&self) -> Option<String> {
        let refused = self.pin_refused.lock().ok().and_then(|r| r.clone());
        // A call into the token that has not returned for a while: a hung token, which no
        // failed signature would ever report.
        let hung = self
            .token_call_since
            .lock()
            .ok()
            .and_then(|since| *since)
            .map(|since| since.elapsed())
            .filter(|waited| *waited >= TOKEN_CALL_HUNG_AFTER)
            .map(|waited| {
                format!(
                    "{}: the token has not answered for {} s",
                    self.uri.describe(),
                    waited.as_secs()
                )
            });
        refused
            .or(hung)
            .or_else(|| self.last_unavailable.lock().ok().and_then(|l| l.clone()))
    }

    fn recheck(&self) {
        let refused = self.pin_refused.lock().ok().is_some_and(|r| r.is_some());
        let unavailable = self
            .last_unavailable
            .lock()
            .ok()
            .is_some_and(|l| l.is_some());
        if !unavailable || refused {
            return;
        }
        // The same check as at start: a signature over a fixed message (never a certificate),
        // verified with the CA's public key, so that a token put back with another key under
        // the same label is not taken for the CA's.
        let Err(e) = self.check_key_pair() else {
            return;
        };
        tracing::debug!(key = %self.uri.describe(), error = %e, "the CA key is still unavailable");
        // Still unavailable, with a fresh session tried, and the token itself not found: the
        // library may have lost it for good. Start it afresh (at most once per recheck, and
        // rechecks back off to minutes), then check again. A key gone from a token that
        // answers, or a refused login, is not cured by that.
        if !self.token_gone.load(Ordering::Relaxed) {
            return;
        }
        {
            let Ok(mut session) = self.session.lock() else {
                return;
            };
            if self.pin_refused.lock().ok().is_some_and(|r| r.is_some()) {
                return;
            }
            if let Err(e) = self.reinitialize_library(&mut session) {
                tracing::warn!(key = %self.uri.describe(), error = %e, "the CA key is unavailable; initializing the PKCS#11 library again did not help");
                return;
            }
        }
        match self.check_key_pair() {
            Ok(()) => tracing::warn!(
                key = %self.uri.describe(),
                "the CA key is available again after the PKCS#11 library was initialized again"
            ),
            Err(e) => tracing::warn!(
                key = %self.uri.describe(),
                error = %e,
                "the CA key is unavailable; initializing the PKCS#11 library again did not help"
            ),
        }
    }
}

impl Pkcs11Signer {
    fn set_token_call_since(&self, since: Option<Instant>) {
        if let Ok(mut call) = self.token_call_since.lock() {
            *call = since;
        }
    }

    /// One signature with the session held by the caller (opened, or reopened once if the
    /// token lost it), the key checked against the CA's public key after a reopening before
    /// the session is released.
    fn sign_in_session(
        &self,
        session: &mut Option<OpenSession>,
        message: &[u8],
    ) -> Result<Vec<u8>, CaError> {
        use aws_lc_rs::digest;
        let digest_of = |algorithm| digest::digest(algorithm, message);
        let (mechanism, data): (Mechanism<'_>, Vec<u8>) = match self.kind {
            TokenKeyKind::P256 => (
                Mechanism::Ecdsa,
                digest_of(&digest::SHA256).as_ref().to_vec(),
            ),
            TokenKeyKind::P384 => (
                Mechanism::Ecdsa,
                digest_of(&digest::SHA384).as_ref().to_vec(),
            ),
            TokenKeyKind::Rsa => (Mechanism::Sha256RsaPkcs, message.to_vec()),
        };
        // No session: the last signature found the token unavailable, and the first try below
        // opens a new one; whatever fails then is that still (no second try).
        let had_session = session.is_some();
        let mut reopened = !had_session;
        let refuse_pin = |failure: &TokenFailure| {
            if failure.pin_rejected {
                if let Ok(mut refused) = self.pin_refused.lock() {
                    *refused = Some(failure.message.clone());
                }
            }
        };
        let signature = match self.sign_in(session, &mechanism, &data) {
            Ok(signature) => signature,
            Err(failure) if failure.pin_rejected => {
                refuse_pin(&failure);
                *session = None;
                return Err(CaError::KeyUnavailable(format!(
                    "{}: {}",
                    self.uri.describe(),
                    failure.message
                )));
            }
            Err(failure) if !had_session => {
                *session = None;
                return Err(CaError::KeyUnavailable(format!(
                    "{}: {}",
                    self.uri.describe(),
                    failure.message
                )));
            }
            Err(failure) if failure.session_lost => {
                tracing::warn!(
                    key = %self.uri.describe(),
                    error = %failure.message,
                    "PKCS#11 session lost; opening a new one and signing once more"
                );
                *session = None;
                reopened = true;
                self.sessions_reopened.fetch_add(1, Ordering::Relaxed);
                self.sign_in(session, &mechanism, &data).map_err(|again| {
                    refuse_pin(&again);
                    *session = None;
                    CaError::KeyUnavailable(format!(
                        "{}: {} (after reopening the session: {})",
                        self.uri.describe(),
                        failure.message,
                        again.message
                    ))
                })?
            }
            Err(failure) => {
                return Err(CaError::Signing(format!(
                    "{}: {}",
                    self.uri.describe(),
                    failure.message
                )))
            }
        };
        let signature = match self.kind {
            TokenKeyKind::P256 => ecdsa_der(&signature, 32)?,
            TokenKeyKind::P384 => ecdsa_der(&signature, 48)?,
            TokenKeyKind::Rsa => signature,
        };
        if reopened {
            // A new session found the key by its label and id again: make sure it is still the
            // CA's key (a token swapped for another with the same labels must not sign
            // certificates that do not chain to the CA).
            let spki = SubjectPublicKeyInfoOwned::from_der(&self.spki_der)?;
            if estuary_wire::signature::verify(&spki, &self.algorithm, message, &signature).is_err()
            {
                *session = None;
                return Err(CaError::KeyUnavailable(format!(
                    "{}: the key found in the token after reopening the session is not the CA's key",
                    self.uri.describe()
                )));
            }
        }
        Ok(signature)
    }
}

#[cfg(test)]
mod tests;
