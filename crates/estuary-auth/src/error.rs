//! Errors of setting up authentication (users, trust anchors, CRLs), and the codes of failed
//! authentications.

use estuary_wire::WireError;

use crate::CertAuthFailure;

/// What can go wrong loading users, trust anchors and bootstrap CRLs.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The system's random number generator failed.
    #[error("no randomness")]
    NoRandomness,
    /// A configured password hash does not parse.
    #[error("user {user:?}: password_hash is not a PHC string: {source}")]
    BadPasswordHash {
        /// The user.
        user: String,
        /// What the PHC parser said.
        #[source]
        source: argon2::password_hash::Error,
    },
    /// Hashing a password failed.
    #[error("password hashing failed: {0}")]
    Hashing(#[source] argon2::password_hash::Error),
    /// A trust anchor certificate does not decode.
    #[error("trust anchor: {0}")]
    AnchorDer(#[source] der::Error),
    /// A trust anchor certificate is not usable as one.
    #[error("trust anchor: {0:?}")]
    AnchorUnusable(webpki::Error),
    /// A bootstrap anchor is not a CA certificate.
    #[error("bootstrap CA {name}: {subject} is not a CA certificate (basicConstraints CA:TRUE, keyCertSign)")]
    AnchorNotACa {
        /// The bootstrap CA's configured name.
        name: String,
        /// Its subject.
        subject: String,
    },
    /// A bootstrap CA certificate does not decode.
    #[error("bootstrap CA {name}: {source}")]
    BootstrapCaDer {
        /// The bootstrap CA's name.
        name: String,
        /// The decoder's error.
        #[source]
        source: der::Error,
    },
    /// A CRL in PEM does not parse.
    #[error("CRL of bootstrap CA {name}: {source}")]
    CrlPem {
        /// The bootstrap CA's name.
        name: String,
        /// The PEM parser's error.
        #[source]
        source: pem::PemError,
    },
    /// A CRL is not DER.
    #[error("CRL of bootstrap CA {name}: not a DER CRL: {source}")]
    CrlDer {
        /// The bootstrap CA's name.
        name: String,
        /// The decoder's error.
        #[source]
        source: der::Error,
    },
    /// A CRL's signed structure is malformed.
    #[error("CRL of bootstrap CA {name}: {source}")]
    CrlMalformed {
        /// The bootstrap CA's name.
        name: String,
        /// What is wrong.
        #[source]
        source: WireError,
    },
    /// A CRL issued by another CA.
    #[error("CRL of bootstrap CA {name}: issued by {issuer}, not by the CA ({ca})")]
    CrlWrongIssuer {
        /// The bootstrap CA's name.
        name: String,
        /// The CRL's issuer.
        issuer: String,
        /// The CA's subject.
        ca: String,
    },
    /// A CRL whose signature does not verify with the CA's key.
    #[error(
        "CRL of bootstrap CA {name}: its signature does not verify with the CA's key: {source}"
    )]
    CrlSignature {
        /// The bootstrap CA's name.
        name: String,
        /// The verifier's error.
        #[source]
        source: WireError,
    },
    /// A CRL that webpki cannot use.
    #[error("CRL of bootstrap CA {name}: {error:?}")]
    CrlUnusable {
        /// The bootstrap CA's name.
        name: String,
        /// webpki's error.
        error: webpki::Error,
    },
}

/// Why a request was not authenticated or not authorized: the `code` is the label of the
/// `auth_failures` metric and the word in logs, so it is stable.
///
/// ```
/// use estuary_auth::{AuthFailure, CertAuthFailure};
/// assert_eq!(AuthFailure::WrongPassword.code(), "wrong_password");
/// let cert = AuthFailure::from(CertAuthFailure::Expired);
/// assert_eq!(cert.code(), "certificate_expired");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthFailure {
    /// A Basic user name or password that does not verify.
    WrongPassword,
    /// Neither credentials nor a client certificate.
    NoCredentials,
    /// An `Authorization` header that is not `Basic` or does not decode.
    BadAuthorizationHeader,
    /// A client certificate this server issued and has revoked.
    CertificateRevoked,
    /// A client certificate from this CA that the store does not know.
    CertificateUnknown,
    /// The store could not be asked about a client certificate.
    StoreError,
    /// The CRL of a bootstrap certificate's CA is not available or not usable.
    CertificateCrlUnusable,
    /// Too many password checks at once; try again.
    PasswordCheckBusy,
    /// Authenticated, but the label's rules do not allow this identity.
    NotAllowed,
    /// Authenticated, but the requested subject is not one this identity may ask for.
    SubjectNotAllowed,
    /// The client certificate did not verify.
    Certificate(CertAuthFailure),
}

impl AuthFailure {
    /// The stable code for metrics and logs (for [`AuthFailure::Certificate`], that of the
    /// [`CertAuthFailure`]).
    pub fn code(&self) -> &'static str {
        match self {
            AuthFailure::WrongPassword => "wrong_password",
            AuthFailure::NoCredentials => "no_credentials",
            AuthFailure::BadAuthorizationHeader => "bad_authorization_header",
            AuthFailure::CertificateRevoked => "certificate_revoked",
            AuthFailure::CertificateUnknown => "certificate_unknown",
            AuthFailure::StoreError => "store_error",
            AuthFailure::CertificateCrlUnusable => "certificate_crl_unusable",
            AuthFailure::PasswordCheckBusy => "password_check_busy",
            AuthFailure::NotAllowed => "not_allowed",
            AuthFailure::SubjectNotAllowed => "subject_not_allowed",
            AuthFailure::Certificate(c) => c.code(),
        }
    }
}

impl From<CertAuthFailure> for AuthFailure {
    fn from(c: CertAuthFailure) -> Self {
        AuthFailure::Certificate(c)
    }
}

impl std::fmt::Display for AuthFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The codes are metric labels: changing one breaks dashboards.
    #[test]
    fn codes_are_the_metric_labels() {
        let all = [
            (AuthFailure::WrongPassword, "wrong_password"),
            (AuthFailure::NoCredentials, "no_credentials"),
            (
                AuthFailure::BadAuthorizationHeader,
                "bad_authorization_header",
            ),
            (AuthFailure::CertificateRevoked, "certificate_revoked"),
            (AuthFailure::CertificateUnknown, "certificate_unknown"),
            (AuthFailure::StoreError, "store_error"),
            (
                AuthFailure::CertificateCrlUnusable,
                "certificate_crl_unusable",
            ),
            (AuthFailure::PasswordCheckBusy, "password_check_busy"),
            (AuthFailure::NotAllowed, "not_allowed"),
            (AuthFailure::SubjectNotAllowed, "subject_not_allowed"),
            (
                CertAuthFailure::UnknownIssuer.into(),
                "certificate_unknown_issuer",
            ),
            (CertAuthFailure::Expired.into(), "certificate_expired"),
            (CertAuthFailure::Malformed.into(), "certificate_malformed"),
            (
                CertAuthFailure::NotForClientAuth.into(),
                "certificate_not_client_auth",
            ),
            (CertAuthFailure::Revoked.into(), "certificate_revoked"),
            (
                CertAuthFailure::CrlUnusable(String::new()).into(),
                "certificate_crl_unusable",
            ),
            (
                CertAuthFailure::InvalidPath(String::new()).into(),
                "certificate_invalid_path",
            ),
        ];
        for (failure, code) in all {
            assert_eq!(failure.code(), code);
            assert_eq!(failure.to_string(), code);
        }
    }
}
