//! HTTP Basic users with argon2id password hashes.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
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
                .map(|parsed| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false),
            None => {
                // Same work as a real check, so timing does not reveal which users exist.
                let _ = hash_password(password);
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
