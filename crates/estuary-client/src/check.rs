//! `estuary check`: the EST part of `iotedge check`. Each check is one line with ✔ or ✘ and,
//! on ✘, what to change.

use std::collections::BTreeSet;
use std::path::Path;

use crate::agent::config::{AgentConfig, CertId, ManagedCert};
use crate::csr::{build_csr, client_auth_extension, edge_ca_extensions, subject_with_common_name};
use crate::{files, ClientError, EnrollOutcome, EstClient};

/// One check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    /// Passed?
    pub ok: bool,
    /// What was checked (and found).
    pub message: String,
    /// On failure: what to change.
    pub hint: Option<String>,
}

impl CheckResult {
    fn pass(message: impl Into<String>) -> Self {
        CheckResult {
            ok: true,
            message: message.into(),
            hint: None,
        }
    }

    fn fail(message: impl Into<String>, hint: impl Into<String>) -> Self {
        CheckResult {
            ok: false,
            message: message.into(),
            hint: Some(hint.into()),
        }
    }
}

/// Options for [`run_checks`].
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Skip the test enrollment (then credentials are not checked).
    pub no_enroll: bool,
}

/// Where IoT Edge keeps its config file.
pub const DEFAULT_IOT_EDGE_CONFIG: &str = "/etc/aziot/config.toml";

/// Runs every check for the config file at `path`.
pub async fn run_checks(path: &Path, options: &CheckOptions) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let hint = match e.kind() {
                std::io::ErrorKind::NotFound => format!(
                    "name the IoT Edge config file with --config FILE (IoT Edge keeps it at {DEFAULT_IOT_EDGE_CONFIG}; for a device without IoT Edge, write one as docs/agent.md shows)"
                ),
                std::io::ErrorKind::PermissionDenied => format!(
                    "run the check as a user that can read {} (IoT Edge's config is readable by root only)",
                    path.display()
                ),
                _ => "name a readable IoT Edge config file with --config FILE".to_string(),
            };
            results.push(CheckResult::fail(
                format!("config file: {}: {e}", path.display()),
                hint,
            ));
            return results;
        }
    };
    let config = match AgentConfig::parse(&text) {
        Ok(c) => c,
        Err(e) => {
            results.push(CheckResult::fail(
                format!("config file: {}: {e}", path.display()),
                "fix the named key (see `estuary agent --help` and docs/agent.md)",
            ));
            return results;
        }
    };
    results.push(CheckResult::pass(format!(
        "config file {} parses; managing {}",
        path.display(),
        config
            .certs
            .iter()
            .map(|c| c.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    )));
    for (key, message) in &config.iot_edge_incompatibilities {
        results.push(CheckResult::fail(
            format!("{key} = {message}"),
            "Estuary's agent accepts it, but IoT Edge refuses to start with it",
        ));
    }
    let mut anchors = Vec::new();
    for p in &config.trusted_certs {
        match files::read_certificates(p) {
            Ok(c) => {
                results.push(CheckResult::pass(format!("trusted_certs: {} holds {} certificate(s)", p.display(), c.len())));
                anchors.extend(c);
            }
            Err(e) => results.push(CheckResult::fail(
                format!("trusted_certs: {e}"),
                "fetch the EST server's CA with `estuary client cacerts --url URL --tofu --out FILE` and confirm its fingerprint",
            )),
        }
    }
    if anchors.is_empty() {
        return results;
    }
    let mut seen_urls = BTreeSet::new();
    // The EST identity first: in the bootstrap flow IoT Edge requests everything else with
    // the est-id certificate, so the check does the same with the one it just obtained.
    let mut order: Vec<&ManagedCert> = config.certs.iter().collect();
    order.sort_by_key(|c| c.id != CertId::EstId);
    let mut est_id: Option<(Vec<Vec<u8>>, Vec<u8>)> = None;
    for cert in order {
        results.push(CheckResult::pass(format!(
            "{}: EST URL {}",
            cert.id, cert.url
        )));
        if seen_urls.insert(cert.url.to_string()) {
            check_server(cert, &anchors, &mut results).await;
        }
        if !options.no_enroll {
            let issued = check_enrollment(cert, &anchors, est_id.as_ref(), &mut results).await;
            if cert.id == CertId::EstId {
                est_id = issued;
            }
        }
    }
    results
}

fn tls_hint(e: &ClientError, cert: &ManagedCert) -> String {
    match e {
        ClientError::ServerNameMismatch { host, .. } => format!(
            "the server certificate does not name {host}: on the server, run `estuary serve --san {host}` (or add it to server_sans) and restart it, or use a URL with a name the certificate has"
        ),
        ClientError::UntrustedServer(_) => "trusted_certs does not hold the CA that issued the server certificate: fetch it with `estuary client cacerts --url URL --tofu --out FILE`".into(),
        ClientError::Connect { .. } => format!("nothing answers at {}: is the server running and the port open?", cert.url.authority()),
        ClientError::Status { status: 404, .. } => "the path is wrong: EST URLs end in /.well-known/est (or /.well-known/est/<label>)".into(),
        _ => "see the error above".into(),
    }
}

async fn check_server(cert: &ManagedCert, anchors: &[Vec<u8>], results: &mut Vec<CheckResult>) {
    let client = match EstClient::builder(cert.url.clone())
        .trust_anchors(anchors.to_vec())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            results.push(CheckResult::fail(
                format!("{}: {e}", cert.url),
                "check trusted_certs",
            ));
            return;
        }
    };
    match client.cacerts_with_content_type().await {
        Ok((content_type, certs)) => {
            results.push(CheckResult::pass(format!(
                "{}: TLS server certificate trusted and valid for {}",
                cert.url, cert.url.host
            )));
            if estuary_wire::media::iot_edge_accepts_pkcs7(&content_type) {
                results.push(CheckResult::pass(format!(
                    "{}: /cacerts returns {} CA certificate(s) as {content_type}",
                    cert.url,
                    certs.len()
                )));
            } else {
                results.push(CheckResult::fail(
                    format!("{}: /cacerts Content-Type {content_type:?}", cert.url),
                    "IoT Edge accepts only application/pkcs7-mime (exactly, or followed by ';'): fix the server",
                ));
            }
        }
        Err(e) => {
            let hint = tls_hint(&e, cert);
            results.push(CheckResult::fail(format!("{}: {e}", cert.url), hint));
        }
    }
}

/// Tries an enrollment as IoT Edge would make it; returns the issued certificate chain and its
/// key (DER PKCS#8), which the bootstrap flow uses for the other certificates.
async fn check_enrollment(
    cert: &ManagedCert,
    anchors: &[Vec<u8>],
    est_id: Option<&(Vec<Vec<u8>>, Vec<u8>)>,
    results: &mut Vec<CheckResult>,
) -> Option<(Vec<Vec<u8>>, Vec<u8>)> {
    let label = format!("{}: enrollment", cert.id);
    let (client, how) = match enrollment_client(cert, anchors, est_id) {
        Ok(x) => x,
        Err(e) => {
            results.push(CheckResult::fail(
                format!("{label}: {e}"),
                "fix the auth settings named above",
            ));
            return None;
        }
    };
    let attempt = async {
        let key = estuary_ca::FileKeySigner::new(
            estuary_ca::KeyChoice::P256
                .generate()
                .map_err(|e| e.to_string())?,
        )
        .map_err(|e| e.to_string())?;
        let mut extensions = Vec::new();
        match cert.id {
            CertId::EdgeCa => extensions.extend(edge_ca_extensions().map_err(|e| e.to_string())?),
            CertId::EstId => extensions.push(client_auth_extension().map_err(|e| e.to_string())?),
            CertId::DeviceId => {}
        }
        let subject = subject_with_common_name(&cert.common_name).map_err(|e| e.to_string())?;
        let csr = build_csr(&key, subject, extensions).map_err(|e| e.to_string())?;
        Ok::<_, String>((key, csr))
    };
    let (key, csr) = match attempt.await {
        Ok(x) => x,
        Err(e) => {
            results.push(CheckResult::fail(format!("{label}: {e}"), "internal error"));
            return None;
        }
    };
    let outcome = client.simpleenroll_with_content_type(&csr).await;
    let issued = match &outcome {
        Ok((_, EnrollOutcome::Issued(certs))) if !certs.is_empty() => {
            Some((certs.clone(), key.key_pair().serialize_der()))
        }
        _ => None,
    };
    match outcome {
        Ok((content_type, EnrollOutcome::Issued(certs))) => {
            results.push(CheckResult::pass(format!("{label}: credentials accepted ({how}); a test certificate was issued{}", if cert.id == CertId::EstId && cert.auth.bootstrap.is_some() { " (used for the checks below, as IoT Edge uses its EST identity)" } else { " and discarded" })));
            let first_is_ours = certs.first().is_some_and(|c| files::key_matches(c, &key));
            if estuary_wire::media::iot_edge_accepts_pkcs7(&content_type) && first_is_ours {
                let ca_note = match (cert.id, certs.first().and_then(|c| files::summarize(c).ok())) {
                    (CertId::EdgeCa, Some(s)) if !s.is_ca => " (but it is not a CA certificate)",
                    _ => "",
                };
                results.push(CheckResult {
                    ok: ca_note.is_empty(),
                    message: format!("{label}: response as IoT Edge requires ({content_type}, issued certificate first){ca_note}"),
                    hint: (!ca_note.is_empty()).then(|| "point [edge_ca] url at a label whose profile issues CA certificates".to_string()),
                });
            } else {
                results.push(CheckResult::fail(
                    format!("{label}: response Content-Type {content_type:?}, issued certificate first: {first_is_ours}"),
                    "IoT Edge needs application/pkcs7-mime and the issued certificate first: fix the server",
                ));
            }
        }
        Ok((_, EnrollOutcome::Pending { .. })) => results.push(CheckResult::fail(
            format!("{label}: the server answered 202 (pending manual approval)"),
            "IoT Edge treats 202 as a failure: approve automatically for this label, or approve the request on the server",
        )),
        Err(ClientError::Status { status: 401, body }) => results.push(CheckResult::fail(
            format!(
                "{label}: credentials rejected ({how}){}",
                if body.trim().is_empty() { String::new() } else { format!(": {body}") }
            ),
            "check username/password (or the bootstrap/identity certificate) in [cert_issuance.est.auth]; \
             the server's log line for this request says why (a 401 has no body)",
        )),
        Err(ClientError::Status { status: 403, body }) => {
            let hint = refusal_hint(cert, &body, &how);
            results.push(CheckResult::fail(format!("{label}: refused: {body}"), hint))
        }
        Err(e) => {
            let hint = tls_hint(&e, cert);
            results.push(CheckResult::fail(format!("{label}: {e}"), hint));
        }
    }
    issued
}

/// Where the credentials of a certificate are configured: its own section's auth keys, which
/// replace `[cert_issuance.est.auth]` for that certificate.
fn auth_section(id: CertId) -> &'static str {
    match id {
        CertId::DeviceId => "[provisioning.attestation.identity_cert]",
        CertId::EdgeCa => "[edge_ca]",
        CertId::EstId => "[cert_issuance.est.auth]",
    }
}

/// What to change after a 403, from the server's reason.
fn refusal_hint(cert: &ManagedCert, body: &str, how: &str) -> String {
    // Estuary: "label X does not accept <what was sent>; it accepts: <the label's auth rule>".
    if body.contains("does not accept") {
        let accepts = body
            .split_once("it accepts:")
            .map(|(_, a)| a.trim().trim_end_matches('.'))
            .filter(|a| !a.is_empty());
        let section = auth_section(cert.id);
        return format!(
            "{url} is the right kind of label, but its auth rule does not accept the credentials sent ({how}){accepts}: give {section} credentials of its own that the label accepts (username/password, identity_cert/identity_pk, or bootstrap_identity_cert/bootstrap_identity_pk; they replace [cert_issuance.est.auth] for {id}), or on the server add this identity to the label's auth (docs/production.md §4)",
            url = cert.url,
            accepts = accepts.map_or(String::new(), |a| format!("; the server accepts: {a}")),
            id = cert.id,
        );
    }
    if cert.id == CertId::EdgeCa
        && (body.contains("CA:TRUE")
            || body.contains("keyCertSign")
            || body.contains("CA certificates"))
    {
        return format!(
            "{} does not issue CA certificates: set [edge_ca] url (or cert_issuance.est.urls.aziot-edged-ca) to a label with the edge-ca profile, e.g. https://HOST:8085/.well-known/est/edge-ca",
            cert.url
        );
    }
    "the server's reason is above: check the label's profile, subject rule and auth settings on the server".into()
}

/// The client IoT Edge would use for `cert`: its Basic credentials, and as TLS client
/// certificate the bootstrap certificate for the EST identity itself, the EST identity
/// certificate for everything else in the bootstrap flow, or the fixed identity certificate.
fn enrollment_client(
    cert: &ManagedCert,
    anchors: &[Vec<u8>],
    est_id: Option<&(Vec<Vec<u8>>, Vec<u8>)>,
) -> Result<(EstClient, String), ClientError> {
    let mut builder = EstClient::builder(cert.url.clone()).trust_anchors(anchors.to_vec());
    let mut how = Vec::new();
    if let Some((u, p)) = &cert.auth.basic {
        builder = builder.basic_auth(u, p);
        how.push(format!("Basic user {u}"));
    }
    if cert.auth.bootstrap.is_some() && cert.id != CertId::EstId {
        let (chain, key) = est_id.ok_or_else(|| ClientError::Config(
            "in the bootstrap flow this certificate is requested with the EST identity certificate (est-id), which could not be obtained (see est-id above)".into(),
        ))?;
        builder = builder.client_identity(chain.clone(), key.clone());
        how.push("the EST identity certificate (est-id) obtained above".into());
        return Ok((builder.build()?, how.join(" + ")));
    }
    let pair = cert.auth.bootstrap.as_ref().or(cert.auth.identity.as_ref());
    if let Some(pair) = pair {
        let chain = files::read_certificates(&pair.cert)?;
        let key = files::read_key(&pair.key)?;
        builder = builder.client_identity(chain, key.key_pair().serialize_der());
        how.push(format!("client certificate {}", pair.cert.display()));
    }
    if how.is_empty() {
        how.push("no credentials".into());
    }
    Ok((builder.build()?, how.join(" + ")))
}
