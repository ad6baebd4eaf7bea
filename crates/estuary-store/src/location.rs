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
        // Only a scheme is shown, and only what looks like one (RFC 3986 §3.1): the rest may
        // hold a password, and so may a text without a colon (libpq's `host=... password=...`).
        let scheme = text
            .split_once(':')
            .map(|(scheme, _)| scheme)
            .filter(|scheme| {
                scheme.len() <= 32
                    && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
            });
        Err(StoreError::BadUrl(match scheme {
            Some(scheme) => format!(
                "{scheme:?}: expected sqlite:PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE"
            ),
            None => "not a URL: expected sqlite:PATH or postgres://USER:PASSWORD@HOST:PORT/DATABASE (libpq's key=value strings are not accepted)".to_string(),
        }))
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
        // Until the text is parsed, errors show only what cannot hold a password.
        let redacted = "the postgres:// URL".to_string();
        let bad = |why: String| StoreError::BadUrl(format!("{redacted}: {why}"));
        // tokio-postgres knows sslmode disable/prefer/require only and no sslrootcert: those
        // two are taken out here and applied by `tls_connector`.
        let (base, query) = match text.split_once('?') {
            Some((base, query)) => (base, query),
            None => (text, ""),
        };
        let mut ssl_mode = None;
        let mut root_cert = None;
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "sslmode" => {
                    ssl_mode = Some(match percent_decode(value).as_str() {
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
                    })
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
        let mut config = tokio_postgres::Config::from_str(&rebuilt).map_err(|e| {
            // "invalid connection string: unknown option `nonsense`"; the parser's own
            // messages name keys, never values.
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            bad(match cause {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            })
        })?;
        if config.get_hosts().is_empty() {
            return Err(bad("no host".into()));
        }
        // tokio-postgres splits user and host at the first `@`: the rest of a password with an
        // `@` in it would become the "host", and be shown and resolved. Not echoed here.
        for host in config.get_hosts() {
            if let tokio_postgres::config::Host::Tcp(name) = host {
                let plausible = !name.is_empty()
                    && name.chars().all(|c| {
                        c.is_ascii_alphanumeric()
                            || matches!(c, '.' | '-' | '_' | ':' | '[' | ']' | '%')
                    });
                if !plausible {
                    return Err(bad(
                        "the host is not a host name or an IP address (an `@`, `/` or `?` in the \
                         password must be percent-encoded: %40, %2F, %3F)"
                            .into(),
                    ));
                }
            }
        }
        let redacted = redacted_form(&config);
        let bad = |why: String| StoreError::BadUrl(format!("{redacted}: {why}"));
        // Without sslmode: libpq's `prefer` on this machine (loopback, a Unix socket), where no
        // one can be on the path; `verify-full` elsewhere, so that the password never goes to
        // a server that was not authenticated (prefer would send it to anyone who answers).
        let ssl_mode = ssl_mode.unwrap_or(if is_local(&config) {
            SslMode::Prefer
        } else {
            SslMode::VerifyFull
        });
        if config.get_dbname().is_none() {
            return Err(bad("no database name (…/DATABASE)".into()));
        }
        if matches!(ssl_mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return Err(bad(format!(
                "sslmode={} (the default for a database on another machine) needs \
                 sslrootcert=FILE, the CA certificate that signed the database server's; \
                 say sslmode=require (encrypted, server not authenticated) or sslmode=disable \
                 to connect without",
                if ssl_mode == SslMode::VerifyCa {
                    "verify-ca"
                } else {
                    "verify-full"
                }
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

    /// Why the database server is not authenticated, when it is not (the password and every
    /// certificate could then go to whoever answers in its place); `None` on this machine
    /// (loopback, Unix socket) or with `verify-ca`/`verify-full`/`sslrootcert`.
    pub fn unauthenticated_server_warning(&self) -> Option<String> {
        if is_local(&self.config) || self.root_cert.is_some() {
            return None;
        }
        let mode = match self.ssl_mode {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa | SslMode::VerifyFull => return None,
        };
        Some(format!(
            "sslmode={mode} without sslrootcert: the database server on another machine is not \
             authenticated, so whoever can answer in its place gets the database password and \
             every certificate; use sslmode=verify-full&sslrootcert=FILE"
        ))
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

/// Whether every host is this machine: a loopback address, `localhost`, or a Unix socket (and
/// every `hostaddr`, which is where the connection really goes when given, a loopback address).
fn is_local(config: &tokio_postgres::Config) -> bool {
    config.get_hostaddrs().iter().all(|ip| ip.is_loopback())
        && config.get_hosts().iter().all(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => {
                name == "localhost"
                    || name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| ip.is_loopback())
            }
            tokio_postgres::config::Host::Unix(_) => true,
        })
}

/// `postgres://USER:***@HOST:PORT/DATABASE`, built from the parsed URL: nothing the parser
/// took as a password can appear, however it was written (a `/` or `?` in it, a percent-encoded
/// parameter name).
fn redacted_form(config: &tokio_postgres::Config) -> String {
    let user = config.get_user().unwrap_or("");
    let password = if config.get_password().is_some() {
        ":***"
    } else {
        ""
    };
    let ports = config.get_ports();
    let hosts = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| {
            let name = match host {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            };
            match ports.get(i).or(ports.first()) {
                Some(port) => format!("{name}:{port}"),
                None => name,
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    let at = if user.is_empty() && password.is_empty() {
        ""
    } else {
        "@"
    };
    // Where the connection really goes, when it is not the host names.
    let hostaddrs = config
        .get_hostaddrs()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let hostaddr = if hostaddrs.is_empty() {
        String::new()
    } else {
        format!("?hostaddr={hostaddrs}")
    };
    format!(
        "postgres://{user}{password}{at}{hosts}/{}{hostaddr}",
        config.get_dbname().unwrap_or("")
    )
}

fn read_roots(path: &std::path::Path) -> Result<rustls::RootCertStore, StoreError> {
    use rustls_pki_types::pem::PemObject;
    let bad = |why: String| StoreError::BadUrl(format!("sslrootcert={}: {why}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    let certificates = rustls_pki_types::CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certificates.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    for certificate in certificates {
        roots
            .add(certificate)
            .map_err(|e| bad(format!("a certificate in it cannot be used: {e}")))?;
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

    /// Regression: a `/`, `?` or `#` in the password, or a percent-encoded `password` key, left
    /// the password in logs and errors.
    #[test]
    fn passwords_never_show_however_they_are_written() {
        for text in [
            "postgres://estuary:S3cr/et+Pw@127.0.0.1:5432/estuary",
            "postgres://estuary:S3cr?et@127.0.0.1:5432/estuary",
            "postgres://estuary:S3cr%23et@127.0.0.1:5432/estuary",
            "postgres://estuary@127.0.0.1:5432/estuary?pass%77ord=S3cret",
            "postgres://estuary@127.0.0.1:5432/estuary?password=S3cret",
        ] {
            let url: DatabaseUrl = text.parse().unwrap();
            let shown = format!("{url} {url:?}");
            assert!(!shown.contains("S3cr"), "{text}: {shown}");
            assert!(
                shown.contains("estuary:***@127.0.0.1:5432/estuary"),
                "{text}: {shown}"
            );
        }
        let e = "postgres://estuary:S3cr/et@127.0.0.1/db?sslmode=often"
            .parse::<DatabaseUrl>()
            .unwrap_err()
            .to_string();
        assert!(!e.contains("S3cr"), "{e}");
        for text in [
            "mysql://root:S3cret@db/x",
            // libpq's key=value form: no scheme at all, the password in the first "word".
            "host=127.0.0.1 user=estuary password=S3cret dbname=estuary",
            "password=S3cret:x host=db",
        ] {
            let e = text.parse::<DatabaseUrl>().unwrap_err().to_string();
            assert!(!e.contains("S3cr"), "{e}");
        }
    }

    /// Without sslmode, a database on another machine must be authenticated (verify-full); on
    /// this one, libpq's prefer. An explicit weaker mode elsewhere is allowed, with a warning.
    #[test]
    fn a_remote_database_is_authenticated_unless_told_otherwise() {
        let e = "postgres://u:pw@db.example.com/estuary"
            .parse::<DatabaseUrl>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs sslrootcert"), "{e}");
        for local in [
            "postgres://u:pw@127.0.0.1/e",
            "postgres://u:pw@localhost/e",
            "postgres://u:pw@[::1]/e",
        ] {
            let DatabaseUrl::Postgres(url) = local.parse::<DatabaseUrl>().unwrap() else {
                panic!()
            };
            assert_eq!(url.ssl_mode, SslMode::Prefer, "{local}");
            assert_eq!(url.unauthenticated_server_warning(), None, "{local}");
        }
        let DatabaseUrl::Postgres(url) = "postgres://u:pw@db.example.com/e?sslmode=require"
            .parse::<DatabaseUrl>()
            .unwrap()
        else {
            panic!()
        };
        assert!(url
            .unauthenticated_server_warning()
            .unwrap()
            .contains("not authenticated"));
    }

    /// Regression (attack review): `localhost` with a remote `hostaddr` counted as local (no
    /// TLS required), and a password with a raw `@` showed as part of the host.
    #[test]
    fn hostaddr_and_raw_at_signs_cannot_weaken_or_leak() {
        let e = "postgres://u:pw@localhost:5432/estuary?hostaddr=192.0.2.2"
            .parse::<DatabaseUrl>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("needs sslrootcert") && e.contains("hostaddr=192.0.2.2"),
            "{e}"
        );
        let e = "postgres://estuary:Pa@ssw0rdSecret@127.0.0.1:5432/estuary"
            .parse::<DatabaseUrl>()
            .unwrap_err()
            .to_string();
        assert!(!e.contains("ssw0rd") && e.contains("%40"), "{e}");
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
