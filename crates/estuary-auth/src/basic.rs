//! HTTP Basic users with argon2id password hashes.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use argon2::password_hash::{Output, PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

use crate::AuthError;

/// The users allowed to authenticate with Basic, with a cache of verified credentials.
///
/// argon2 is deliberately slow (tens of milliseconds); verifying it on every request would cap
/// the server far below what devices need. After one successful verification, the credential's
/// keyed SHA-256 (key random per process, never stored) is remembered, so repeated requests
/// cost one hash. Failed attempts are never cached: every guess pays the full argon2 cost.
#[derive(Debug, Default)]
pub struct BasicUsers {
    hashes: HashMap<String, String>,
    verified: RwLock<HashSet<[u8; 32]>>,
    cache_key: [u8; 32],
}

/// Most remembered credentials before the cache is emptied.
const CACHE_LIMIT: usize = 100_000;

impl BasicUsers {
    /// Users from `(name, PHC password hash)` pairs. Fails on a hash that does not parse.
    pub fn new(users: impl IntoIterator<Item = (String, String)>) -> Result<Self, AuthError> {
        let mut hashes = HashMap::new();
        for (name, hash) in users {
            if let Err(source) = PasswordHash::new(&hash) {
                return Err(AuthError::BadPasswordHash { user: name, source });
            }
            hashes.insert(name, hash);
        }
        let mut cache_key = [0u8; 32];
        aws_lc_rs::rand::fill(&mut cache_key).map_err(|_| AuthError::NoRandomness)?;
        Ok(BasicUsers {
            hashes,
            verified: RwLock::new(HashSet::new()),
            cache_key,
        })
    }

    /// The fast path: `Some(true)` if this exact credential was verified before, `None` if
    /// [`verify`](Self::verify) must run (call that off the async threads).
    pub fn check_cached(&self, user: &str, password: &str) -> Option<bool> {
        let key = self.credential_key(user, password);
        let hit = self.verified.read().ok()?.contains(&key);
        hit.then_some(true)
    }

    /// Whether a user of this name is configured (for scheduling password checks; the check
    /// itself costs the same either way).
    pub fn knows(&self, user: &str) -> bool {
        self.hashes.contains_key(user)
    }

    /// Verifies a credential with argon2 (slow). Unknown users cost the same as known ones.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        let ok = match self.hashes.get(user) {
            Some(hash) => PasswordHash::new(hash)
                .map(|parsed| argon2_matches(&parsed, password.as_bytes()))
                .unwrap_or(false),
            None => {
                // Same work as a real check, so timing does not reveal which users exist.
                if let Ok(dummy) = PasswordHash::new(UNKNOWN_USER_HASH) {
                    let _ = argon2_matches(&dummy, password.as_bytes());
                }
                false
            }
        };
        if ok {
            if let Ok(mut cache) = self.verified.write() {
                if cache.len() >= CACHE_LIMIT {
                    cache.clear();
                }
                cache.insert(self.credential_key(user, password));
            }
        }
        ok
    }

    fn credential_key(&self, user: &str, password: &str) -> [u8; 32] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        ctx.update(&self.cache_key);
        ctx.update(&(user.len() as u64).to_be_bytes());
        ctx.update(user.as_bytes());
        ctx.update(password.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

thread_local! {
    /// This thread's argon2 working memory (19 MiB with the default parameters), kept from one
    /// check to the next. Allocating and freeing it per check let glibc's allocator keep a new
    /// copy resident again and again: forty wrong passwords took the server from 19 to over
    /// 250 MiB. The checks run on a few long-lived threads (estuary-server's
    /// `password_checkers`), so this is a bounded amount per thread.
    static ARGON2_MEMORY: std::cell::RefCell<Vec<argon2::Block>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `password` hashes to `hash` (argon2, with the algorithm, version, parameters and
/// salt the PHC string names), in this thread's reused working memory; the comparison is
/// constant-time (`Output`'s equality).
fn argon2_matches(hash: &PasswordHash<'_>, password: &[u8]) -> bool {
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) = (
        argon2::Params::try_from(hash),
        argon2::Algorithm::try_from(hash.algorithm),
    ) else {
        return false;
    };
    let version = match hash.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let mut salt_buffer = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buffer) else {
        return false;
    };
    let blocks = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let mut computed = vec![0u8; expected.len()];
    let hashed = ARGON2_MEMORY.with(|memory| {
        let Ok(mut memory) = memory.try_borrow_mut() else {
            return false;
        };
        if memory.len() < blocks {
            memory.resize(blocks, argon2::Block::default());
        }
        argon
            .hash_password_into_with_memory(password, salt, &mut computed, &mut memory[..blocks])
            .is_ok()
    });
    hashed && Output::new(&computed).is_ok_and(|computed| computed == expected)
}

/// What an unknown user's password is checked against, at the cost of a real check: the hash
/// of a random password nobody kept, with the default parameters of [`hash_password`].
const UNKNOWN_USER_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c0GN7d+yGb8owOdAu0DXEg$89jlg261WqDv7AtKABKRyrLyfwZllFg3YEANHywXYN0";

/// Hashes a password with argon2id and a random salt, as a PHC string for the config file.
pub fn hash_password(password: &str) -> Result<String, AuthError> {
    let mut salt_bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt_bytes).map_err(|_| AuthError::NoRandomness)?;
    let salt = SaltString::encode_b64(&salt_bytes).map_err(AuthError::Hashing)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(AuthError::Hashing)
}

/// Parses `Authorization: Basic <base64(user:password)>` (RFC 7617 §2). `None` for any other
/// scheme or a malformed value.
pub fn parse_basic_authorization(header: &str) -> Option<(String, String)> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(rest.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An unknown user's check must cost what a real one does: the same parameters as
    /// [`hash_password`] writes.
    #[test]
    fn the_unknown_user_hash_has_the_default_parameters() -> Result<(), AuthError> {
        let fresh = hash_password("anything")?;
        let params = |phc: &str| {
            PasswordHash::new(phc)
                .map(|h| (h.algorithm.to_string(), h.version, h.params.to_string()))
                .ok()
        };
        assert_eq!(params(UNKNOWN_USER_HASH), params(&fresh));
        // And a real check still tells a right password from a wrong one.
        let parsed = PasswordHash::new(&fresh).map_err(AuthError::Hashing)?;
        assert!(argon2_matches(&parsed, b"anything"));
        assert!(!argon2_matches(&parsed, b"anythinG"));
        Ok(())
    }

    #[test]
    fn verifies_and_caches_only_successes() -> Result<(), AuthError> {
        let users = BasicUsers::new([("estuser".to_string(), hash_password("estpwd")?)])?;
        assert_eq!(users.check_cached("estuser", "estpwd"), None);
        assert!(!users.verify("estuser", "wrong"));
        assert!(!users.verify("nobody", "estpwd"));
        assert_eq!(users.check_cached("estuser", "wrong"), None);
        assert!(users.verify("estuser", "estpwd"));
        assert_eq!(users.check_cached("estuser", "estpwd"), Some(true));
        Ok(())
    }

    #[test]
    fn parses_basic_headers() {
        assert_eq!(
            parse_basic_authorization("Basic ZXN0dXNlcjplc3Rwd2Q="),
            Some(("estuser".into(), "estpwd".into()))
        );
        assert_eq!(
            parse_basic_authorization("basic ZXN0dXNlcjplc3Rwd2Q="),
            Some(("estuser".into(), "estpwd".into()))
        );
        assert_eq!(parse_basic_authorization("Bearer abc"), None);
        assert_eq!(parse_basic_authorization("Basic !!!"), None);
        assert_eq!(parse_basic_authorization("Basic"), None);
    }

    #[test]
    fn bad_hash_in_config_is_an_error() {
        assert!(BasicUsers::new([("u".to_string(), "plaintext".to_string())]).is_err());
    }
}
