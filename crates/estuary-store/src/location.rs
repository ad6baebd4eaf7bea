//! Where the store lives: `sqlite:PATH` or a PostgreSQL URL (`--database`, `ESTUARY_DATABASE`,
//! `[database] url`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use crate::StoreError;

/// A database named by a URL.
#[derive(Clone)]
pub enum DatabaseUrl {
    /// `sqlite:PATH` (also `sqlite://PATH`): the embedded store in one file.
    Sqlite(PathBuf),
    /// `postgres://user:password@host:port/db?sslmode=...` (also `postgresql://`).
    Postgres(Box<PostgresUrl>),
}

impl DatabaseUrl {
    /// The URL with any password replaced by `***`: what logs and error messages show.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => format!("sqlite:{}", path.display()),
            DatabaseUrl::Postgres(url) => url.redacted.clone(),
        }
    }
}

/// Never prints a password.
impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl FromStr for DatabaseUrl {
    type Err = StoreError;

    fn from_str(text: &str) -> Result<Self, StoreError> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix("sqlite:") {
            // `sqlite:///var/lib/x.db` and `sqlite:x.db` both name a file.
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(StoreError::BadUrl(
                    "sqlite: needs a file, as in sqlite:/var/lib/estuary/estuary.db".into(),
                ));
            }
            return Ok(DatabaseUrl::Sqlite(PathBuf::from(path)));
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return Ok(DatabaseUrl::Postgres(Box::new(PostgresUrl::parse(text)?)));
        }
        Err(StoreError::BadUrl(format!(
            "{:?}: expected sqlite:PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE",
            redact(text)
        )))
    }
}

/// How the connection to PostgreSQL is protected: libpq's `sslmode` values, with libpq's
/// meanings (<https://www.postgresql.org/docs/current/libpq-ssl.html>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, without checking its certificate (libpq's default).
    Prefer,
    /// TLS or no connection; the certificate is checked against `sslrootcert` if one is given.
    Require,
    /// TLS, the certificate must chain to `sslrootcert`.
    VerifyCa,
    /// TLS, the certificate must chain to `sslrootcert` and name the host.
    VerifyFull,
}

/// A parsed PostgreSQL URL.
#[derive(Clone)]
pub struct PostgresUrl {
    pub(crate) config: tokio_postgres::Config,
    pub(crate) ssl_mode: SslMode,
    pub(crate) root_cert: Option<PathBuf>,
    pub(crate) redacted: String,
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl PostgresUrl {
    fn parse(text: &str) -> Result<Self, StoreError> {
        let redacted = redact(text);
        let bad = |why: String| StoreError::BadUrl(format!("{redacted}: {why}"));
        // tokio-postgres knows sslmode disable/prefer/require only and no sslrootcert: those
        // two are taken out here and applied by `tls_connector`.
        let (base, query) = match text.split_once('?') {
            Some((base, query)) => (base, query),
            None => (text, ""),
        };
        let mut ssl_mode = SslMode::Prefer;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => {
                    ssl_mode = match percent_decode(value).as_str() {
                        "disable" => SslMode::Disable,
                        "allow" | "prefer" => SslMode::Prefer,
                        "require" => SslMode::Require,
                        "verify-ca" => SslMode::VerifyCa,
                        "verify-full" => SslMode::VerifyFull,
                        other => {
                            return Err(bad(format!(
                                "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
                            )))
                        }
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(percent_decode(value))),
                _ => kept.push(pair),
            }
        }
        let rebuilt = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        let mut config =
            tokio_postgres::Config::from_str(&rebuilt).map_err(|e| bad(e.to_string()))?;
        if config.get_hosts().is_empty() {
            return Err(bad("no host".into()));
        }
        if config.get_dbname().is_none() {
            return Err(bad("no database name (…/DATABASE)".into()));
        }
        if matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(bad(format!(
                "sslmode={} needs sslrootcert=FILE (the CA certificate that signed the database server's)",
                if ssl_mode == SslMode::VerifyCa { "verify-ca" } else { "verify-full" }
            )));
        }
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("estuary");
        }
        Ok(PostgresUrl {
            config,
            ssl_mode,
            root_cert,
            redacted,
        })
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The TLS connector for this URL's `sslmode` and `sslrootcert`.
    pub(crate) fn tls_connector(
        &self,
    ) -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| StoreError::BadUrl(format!("TLS: {e}")))?;
        let roots = match &self.root_cert {
            Some(path) => Some(read_roots(path)?),
            None => None,
        };
        let verifier: Arc<dyn rustls::client::danger::ServerCertVerifier> =
            match (self.ssl_mode, roots) {
                (SslMode::Disable | SslMode::Prefer | SslMode::Require, None) => {
                    Arc::new(AnyCertificate(provider))
                }
                (SslMode::VerifyFull, Some(roots)) => web_pki(roots, provider)?,
                (_, Some(roots)) => Arc::new(AnyName(web_pki(roots, provider)?)),
                (_, None) => return Err(StoreError::BadUrl("sslrootcert missing".into())),
            };
        let config = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
    }
}

fn read_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, StoreError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |why: String| StoreError::BadUrl(format!("sslrootcert={}: {why}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    let certificates = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let (added, _) = roots.add_parsable_certificates(certificates);
    if added == 0 {
        return Err(bad("no certificate in it".into()));
    }
    Ok(roots)
}

fn web_pki(
    roots: rustls::RootCertStore,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<rustls::client::WebPkiServerVerifier>, StoreError> {
    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| StoreError::BadUrl(format!("sslrootcert: {e}")))
}

/// `sslmode=prefer`/`require` without `sslrootcert`: encrypted, the server not authenticated
/// (what libpq does; say `verify-full` to authenticate it). The handshake's signatures are
/// still checked.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `sslmode=verify-ca` (and `require` with `sslrootcert`, as libpq): the chain must lead to
/// the root, the host name is not checked.
#[derive(Debug)]
struct AnyName(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The URL with the password of its user part, and any `password=` parameter, replaced by
/// `***`.
fn redact(text: &str) -> String {
    let mut out = text.to_string();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo = &out[rest_start..rest_start + at];
            if let Some(colon) = userinfo.find(':') {
                let start = rest_start + colon + 1;
                out.replace_range(start..rest_start + at, "***");
            }
        }
    }
    if let Some((base, query)) = out.split_once('?') {
        let query = query
            .split('&')
            .map(|pair| {
                if pair.starts_with("password=") {
                    "password=***".to_string()
                } else {
                    pair.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("&");
        out = format!("{base}?{query}");
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let digits = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(byte) = u8::from_str_radix(digits, 16) {
                out.push(byte);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn urls_parse_and_never_show_their_password() {
        let url: DatabaseUrl = "postgres://estuary:s3cret@db.example:5433/estuary?sslmode=verify-full&sslrootcert=/etc/ssl/db%20ca.pem"
            .parse()
            .unwrap();
        let DatabaseUrl::Postgres(pg) = &url else {
            panic!("not postgres")
        };
        assert_eq!(pg.ssl_mode, SslMode::VerifyFull);
        assert_eq!(pg.root_cert, Some(PathBuf::from("/etc/ssl/db ca.pem")));
        assert_eq!(pg.config.get_dbname(), Some("estuary"));
        assert_eq!(pg.config.get_ports(), &[5433]);
        let shown = format!("{url} {url:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("estuary:***@db.example"), "{shown}");

        let url: DatabaseUrl = "postgresql://u@localhost/db?password=s3cret"
            .parse()
            .unwrap();
        assert!(!url.to_string().contains("s3cret"));

        assert!(matches!(
            "sqlite:/var/lib/estuary/estuary.db".parse::<DatabaseUrl>(),
            Ok(DatabaseUrl::Sqlite(p)) if p == Path::new("/var/lib/estuary/estuary.db")
        ));
        assert!(matches!(
            "sqlite:///var/x.db".parse::<DatabaseUrl>(),
            Ok(DatabaseUrl::Sqlite(p)) if p == Path::new("/var/x.db")
        ));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (text, expected) in [
            ("mysql://u:p@h/db", "expected sqlite:PATH"),
            ("sqlite:", "needs a file"),
            (
                "postgres://u:pw@h/db?sslmode=sometimes",
                "sslmode=sometimes",
            ),
            (
                "postgres://u:pw@h/db?sslmode=verify-full",
                "needs sslrootcert",
            ),
            ("postgres://u:pw@h/db?nonsense=1", "nonsense"),
            ("postgres://u:pw@h", "no database name"),
        ] {
            let e = text.parse::<DatabaseUrl>().err().unwrap().to_string();
            assert!(e.contains(expected), "{text}: {e}");
            assert!(!e.contains(":pw@"), "{text}: {e}");
        }
    }
}
