//! Against a real SoftHSM2 token (Debian `softhsm2`): these tests fail, never skip, when it is
//! not installed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use super::*;

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "4321";

/// One SoftHSM2 token directory for this test process (SoftHSM reads `SOFTHSM2_CONF` once, at
/// C_Initialize), with a token labelled `unit` whose user PIN is in `pin` (mode 0600).
fn token() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        assert!(
            Path::new(MODULE).is_file(),
            "{MODULE} is missing: these tests need SoftHSM2 (apt-get install softhsm2 opensc)"
        );
        let dir = tempfile::tempdir().unwrap().keep();
        std::fs::create_dir(dir.join("tokens")).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.join("tokens").display()
            ),
        )
        .unwrap();
        // Before any C_Initialize in this process (every test comes through here first).
        std::env::set_var("SOFTHSM2_CONF", &conf);
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                "unit",
                "--pin",
                PIN,
                "--so-pin",
                "8765",
            ])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .expect("softhsm2-util is required for these tests (apt-get install softhsm2)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let pin = dir.join("pin");
        std::fs::write(&pin, format!("{PIN}\n")).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(0o600)).unwrap();
        dir
    })
}

/// Held by every test that uses the token, one at a time: a logout (C_Logout) ends the login of
/// every session of the process, and SoftHSM's file object store failed now and then
/// (CKR_GENERAL_ERROR) when several tests generated keys at once.
static LOGIN: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn uri_for(object: &str) -> Pkcs11Uri {
    let dir = token();
    Pkcs11Uri::parse(&format!(
        "pkcs11:token=unit;object={object}?module-path={MODULE}&pin-source=file:{}",
        dir.join("pin").display()
    ))
    .unwrap()
}

fn verify(signer: &Pkcs11Signer, message: &[u8], signature: &[u8]) {
    let spki = SubjectPublicKeyInfoOwned::from_der(signer.public_key_der()).unwrap();
    estuary_wire::signature::verify(&spki, &signer.signature_algorithm(), message, signature)
        .unwrap();
}

#[test]
fn makes_keys_of_each_type_that_sign_verifiable_signatures() {
    let _login = LOGIN
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (choice, object) in [
        (KeyChoice::P256, "gen-p256"),
        (KeyChoice::P384, "gen-p384"),
        (KeyChoice::Rsa2048, "gen-rsa2048"),
    ] {
        let uri = uri_for(object);
        let signer = Pkcs11Signer::generate(&uri, choice).unwrap();
        let spki = SubjectPublicKeyInfoOwned::from_der(signer.public_key_der()).unwrap();
        assert_eq!(
            estuary_wire::KeyType::from_spki(&spki).unwrap(),
            choice.key_type()
        );
        assert!(signer.may_block());
        let message = b"a TBSCertificate, say";
        let signature = signer.sign(message).unwrap();
        verify(&signer, message, &signature);
        // Opened again (as `serve` does): the same public key.
        let reopened = Pkcs11Signer::open(&uri).unwrap();
        assert_eq!(reopened.public_key_der(), signer.public_key_der());
        // Never a second key under a taken label.
        let err = Pkcs11Signer::generate(&uri, choice)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already has an object labelled"), "{err}");
    }
}

#[test]
fn the_private_key_is_sensitive_and_not_extractable() {
    let _login = LOGIN
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let uri = uri_for("attrs");
    let signer = Pkcs11Signer::generate(&uri, KeyChoice::P256).unwrap();
    let guard = signer.session.lock().unwrap();
    let open = guard.as_ref().unwrap();
    let attributes = open
        .session
        .get_attributes(
            open.key,
            &[
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Token,
                AttributeType::Private,
            ],
        )
        .unwrap();
    for attribute in attributes {
        match attribute {
            Attribute::Sensitive(v) | Attribute::Token(v) | Attribute::Private(v) => assert!(v),
            Attribute::Extractable(v) => assert!(!v),
            other => panic!("{other:?}"),
        }
    }
}

/// Another session of this application logs out: the signer's session is no longer logged in
/// (CKR_USER_NOT_LOGGED_IN / CKR_KEY_HANDLE_INVALID); it reopens, logs in and signs.
#[test]
fn a_lost_login_is_reopened_and_the_signature_retried_once() {
    // Logging out logs every session of this process out: no other test may sign meanwhile.
    let _alone = LOGIN
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let uri = uri_for("retry");
    let signer = Pkcs11Signer::generate(&uri, KeyChoice::P256).unwrap();
    assert_eq!(signer.sessions_reopened(), 0);
    let other = signer
        .context
        .open_rw_session(*signer.slot.lock().unwrap())
        .unwrap();
    other.logout().unwrap();
    let signature = signer.sign(b"after a logout").unwrap();
    verify(&signer, b"after a logout", &signature);
    assert_eq!(signer.sessions_reopened(), 1);
    // And on.
    signer.sign(b"again").unwrap();
    assert_eq!(signer.sessions_reopened(), 1);
}

#[test]
fn signs_from_many_threads_at_once() {
    let _login = LOGIN
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let uri = uri_for("threads");
    let signer = std::sync::Arc::new(Pkcs11Signer::generate(&uri, KeyChoice::P384).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let signer = signer.clone();
            std::thread::spawn(move || {
                for j in 0..25 {
                    let message = format!("{i}-{j}");
                    let signature = signer.sign(message.as_bytes()).unwrap();
                    verify(&signer, message.as_bytes(), &signature);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn clear_errors_for_a_missing_token_key_library_or_pin() {
    let _login = LOGIN
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A wrong PIN is an e2e test (hsm.rs): in this process the token is already logged in
    // (PKCS#11 logins belong to the application, not the session), so no PIN is checked here.
    let dir = token();
    let uri = Pkcs11Uri::parse(&format!(
        "pkcs11:token=nosuch;object=x?module-path={MODULE}&pin-source=file:{}",
        dir.join("pin").display()
    ))
    .unwrap();
    let err = Pkcs11Signer::open(&uri).unwrap_err();
    assert!(matches!(err, CaError::KeyUnavailable(_)), "{err:?}");
    assert!(err.to_string().contains("no such token"), "{err}");
    assert!(err.to_string().contains("\"unit\""), "{err}");

    let err = Pkcs11Signer::open(&uri_for("never-made"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("no private key by that name"), "{err}");

    let uri =
        Pkcs11Uri::parse("pkcs11:object=x?module-path=/nonexistent/lib.so&pin-value=1").unwrap();
    let err = Pkcs11Signer::open(&uri).unwrap_err().to_string();
    assert!(err.contains("/nonexistent/lib.so does not exist"), "{err}");

    let uri =
        Pkcs11Uri::parse(&format!("pkcs11:token=unit;object=x?module-path={MODULE}")).unwrap();
    let err = Pkcs11Signer::open(&uri).unwrap_err().to_string();
    assert!(err.contains("no PIN"), "{err}");

    let err = Pkcs11Signer::generate(&uri_for("ed"), KeyChoice::Ed25519)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Ed25519"), "{err}");
}

#[test]
fn debug_shows_the_key_but_not_the_pin() {
    let _login = LOGIN
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let uri = Pkcs11Uri::parse(&format!(
        "pkcs11:token=unit;object=debug?module-path={MODULE}&pin-value={PIN}"
    ))
    .unwrap();
    let signer = Pkcs11Signer::generate(&uri, KeyChoice::P256).unwrap();
    let text = format!("{signer:?}");
    assert!(text.contains("debug") && !text.contains(PIN), "{text}");
}

#[test]
fn ecdsa_signatures_become_der() {
    // r with its high bit set gets a 0x00; s with leading zeros loses them.
    let mut raw = vec![0u8; 64];
    raw[0] = 0x80;
    raw[31] = 1;
    raw[62] = 0x7f;
    raw[63] = 2;
    let der = ecdsa_der(&raw, 32).unwrap();
    let mut expected = vec![0x30, 0x27, 0x02, 0x21, 0x00, 0x80];
    expected.extend([0u8; 30]);
    expected.extend([0x01, 0x02, 0x02, 0x7f, 0x02]);
    assert_eq!(der, expected);
    assert!(ecdsa_der(&raw[..63], 32).is_err());
}

/// Regression (attack review): once the token refused the PIN (changed on the token, say),
/// every signature tried two more logins, and a real HSM locks the PIN after a few. Now the
/// first refusal ends the logins until a restart.
#[test]
fn a_refused_pin_is_not_tried_again() {
    let _alone = LOGIN
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let uri = uri_for("pin-changed");
    let signer = Pkcs11Signer::generate(&uri, KeyChoice::P256).unwrap();
    signer.sign(b"before").unwrap();
    let other = signer
        .context
        .open_rw_session(*signer.slot.lock().unwrap())
        .unwrap();
    let old = AuthPin::from(PIN);
    let new = AuthPin::from("98765");
    other.set_pin(&old, &new).unwrap();
    other.logout().unwrap();
    let first = signer.sign(b"after the change").unwrap_err().to_string();
    assert!(first.contains("refused the PIN"), "{first}");
    let reopened = signer.sessions_reopened();
    let second = signer.sign(b"again").unwrap_err().to_string();
    assert!(second.contains("no further logins"), "{second}");
    assert_eq!(
        signer.sessions_reopened(),
        reopened,
        "no new login was tried"
    );
    // Put the token's PIN back for the other tests.
    let restore = signer
        .context
        .open_rw_session(*signer.slot.lock().unwrap())
        .unwrap();
    restore.login(UserType::User, Some(&new)).unwrap();
    restore.set_pin(&new, &old).unwrap();
}

/// A PIN file others can read or write is refused: reading it signs as the CA, writing it
/// locks the token's PIN.
#[test]
fn a_pin_file_others_can_read_is_refused() {
    use std::os::unix::fs::PermissionsExt as _;
    // The token (and SOFTHSM2_CONF) before the library's first use, whichever test runs first.
    token();
    let _login = LOGIN
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let dir = tempfile::tempdir().unwrap();
    let pin = dir.path().join("pin");
    std::fs::write(&pin, format!("{PIN}\n")).unwrap();
    for (mode, expected) in [(0o644, "readable by other users"), (0o620, "writable")] {
        std::fs::set_permissions(&pin, std::fs::Permissions::from_mode(mode)).unwrap();
        let uri = Pkcs11Uri::parse(&format!(
            "pkcs11:token=unit;object=mode-check?module-path={MODULE}&pin-source=file:{}",
            pin.display()
        ))
        .unwrap();
        let e = Pkcs11Signer::generate(&uri, KeyChoice::P256)
            .unwrap_err()
            .to_string();
        assert!(e.contains(expected), "{mode:o}: {e}");
    }
    // A FIFO is refused, not waited on for a writer.
    let fifo = dir.path().join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    let uri = Pkcs11Uri::parse(&format!(
        "pkcs11:token=unit;object=fifo-check?module-path={MODULE}&pin-source=file:{}",
        fifo.display()
    ))
    .unwrap();
    let e = Pkcs11Signer::generate(&uri, KeyChoice::P256)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is not a regular file"), "{e}");
}

/// A key whose token stopped answering is reported unavailable (`/readyz`), and a later
/// recheck that signs makes it available again; a key that stays gone stays unavailable (and
/// the library is not initialized again for it: the token still answers).
#[test]
fn an_unavailable_key_is_rechecked_and_available_once_it_signs() {
    let _alone = LOGIN
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let signer = Pkcs11Signer::generate(&uri_for("recheck"), KeyChoice::P256).unwrap();
    assert_eq!(signer.unavailable(), None);
    // As after a failed signature: no session, the reason kept, and the login gone too.
    *signer.session.lock().unwrap() = None;
    *signer.last_unavailable.lock().unwrap() = Some("the token did not answer".into());
    signer
        .context
        .open_rw_session(*signer.slot.lock().unwrap())
        .unwrap()
        .logout()
        .unwrap();
    assert_eq!(
        signer.unavailable().as_deref(),
        Some("the token did not answer")
    );
    signer.recheck();
    assert_eq!(signer.unavailable(), None);
    assert_eq!(signer.library_reinitialized(), 0);
    signer.sign(b"signs").unwrap();

    // A call into the token that has not returned for 10 s (a hung token) is reported too,
    // though no signature has failed.
    *signer.token_call_since.lock().unwrap() =
        Some(Instant::now() - std::time::Duration::from_secs(11));
    assert!(signer
        .unavailable()
        .is_some_and(|why| why.contains("has not answered for 11 s")));
    *signer.token_call_since.lock().unwrap() = Some(Instant::now());
    assert_eq!(signer.unavailable(), None);
    *signer.token_call_since.lock().unwrap() = None;

    // The key is deleted from the token: the next signature fails, the key is unavailable,
    // and a recheck leaves it so.
    let other = signer
        .context
        .open_rw_session(*signer.slot.lock().unwrap())
        .unwrap();
    let key = find_private_key(
        &other,
        &signer.uri,
        Some(&signer.key_id),
        Some(&signer.key_label),
    )
    .unwrap();
    other.destroy_object(key).unwrap();
    assert!(matches!(
        signer.sign(b"gone"),
        Err(CaError::KeyUnavailable(_))
    ));
    assert!(signer.unavailable().is_some());
    // The token answers, the key is gone: a recheck does not start the library afresh (that
    // would not bring the key back), and the key stays unavailable.
    signer.recheck();
    assert!(signer.unavailable().is_some());
    assert_eq!(signer.library_reinitialized(), 0);
}
