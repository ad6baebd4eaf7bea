//! The label's rules, applied at the layer that sees the device: which of the identities a
//! request proved this label accepts ([`AuthRules`]), which subjects each may ask for
//! ([`SubjectRule`]), and RFC 7030 §4.2.2's re-enrollment identity check. A registration
//! authority applies them for its devices before forwarding; the server above it applies its
//! own rules to the RA.

use estuary_auth::{AuthFailure, Requester, VerifiedClientCert};
use estuary_store::CertificateStatus;
use estuary_wire::csr::VerifiedCsr;

use std::collections::BTreeMap;

use crate::config::{AuthRules, LabelPolicy, RaRule, SubjectRule, CLIENT_CN, DEFAULT_LABEL};
use crate::error::EstError;
use crate::est::{truncate, Operation};

/// One identity a request proved, with what the store knows of a certificate of ours.
#[derive(Debug)]
pub struct Candidate {
    /// The identity.
    pub requester: Requester,
    /// For a certificate this CA issued: its label, profile and revocation state.
    pub issued_under: Option<CertificateStatus>,
}

impl Candidate {
    /// The identity, with where a certificate of ours was issued.
    pub fn describe(&self) -> String {
        match &self.issued_under {
            Some(s) => {
                let name = |l: &str| {
                    if l.is_empty() {
                        DEFAULT_LABEL.to_string()
                    } else {
                        l.to_string()
                    }
                };
                let origin = if s.origin_label == s.label {
                    String::new()
                } else {
                    format!(", first issued under label {}", name(&s.origin_label))
                };
                format!(
                    "{} (issued under label {}{origin}, profile {})",
                    self.requester.identity(),
                    name(&s.label),
                    s.profile
                )
            }
            None => self.requester.identity(),
        }
    }
}

fn allowed_by(rules: &AuthRules, candidate: &Candidate) -> bool {
    match &candidate.requester {
        Requester::BasicUser { name } => {
            rules.basic_any || rules.basic_users.iter().any(|u| u == name)
        }
        Requester::ClientCert(_) => {
            rules.client_cert
                || candidate.issued_under.as_ref().is_some_and(|s| {
                    // Where the certificate's line began, not where it was last re-issued.
                    let label = if s.origin_label.is_empty() {
                        DEFAULT_LABEL
                    } else {
                        s.origin_label.as_str()
                    };
                    rules.client_cert_labels.iter().any(|l| l == label)
                        || rules.client_cert_profiles.contains(&s.profile)
                })
        }
        Requester::BootstrapCert(c) => {
            rules.bootstrap_any || rules.bootstrap_named.contains(&c.anchor)
        }
        Requester::RegistrationAuthority { name, .. } => {
            rules.ra_any || rules.ra_named.iter().any(|n| n == name)
        }
    }
}

/// Why a subject rule refuses a CSR: a message for the requester (the body of the 403), not
/// an error with a cause.
#[derive(Debug, Default)]
struct SubjectRefusal(String);

impl From<String> for SubjectRefusal {
    fn from(message: String) -> Self {
        SubjectRefusal(message)
    }
}

impl std::fmt::Display for SubjectRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The label's subject rule for a request authenticated by a certificate (see
/// [`SubjectRule`]); Basic-authenticated requests are bound by the profile instead.
fn subject_allowed(
    rule: &SubjectRule,
    requester: &Requester,
    csr: &VerifiedCsr,
) -> Result<(), SubjectRefusal> {
    let cert: &VerifiedClientCert = match requester {
        Requester::BasicUser { .. } => return Ok(()),
        // Bound by its own rule instead (see `ra_subject_allowed`).
        Requester::RegistrationAuthority { .. } => return Ok(()),
        Requester::ClientCert(c) | Requester::BootstrapCert(c) => c,
    };
    match rule {
        SubjectRule::Any => Ok(()),
        SubjectRule::SameAsClientCert => {
            if cert.subject_name != csr.subject {
                return Err(SubjectRefusal(format!(
                    "a request authenticated by certificate {:?} may only ask for that subject, not {:?} \
                     (subject = \"same-as-client-cert\")",
                    cert.subject,
                    csr.subject.to_string()
                )));
            }
            match &csr.requested.subject_alt_name {
                Some(san) if Some(san) != cert.subject_alt_name.as_ref() => Err(SubjectRefusal(format!(
                    "a request authenticated by certificate {:?} may only ask for its subjectAltName (or none) \
                     (subject = \"same-as-client-cert\")",
                    cert.subject
                ))),
                _ => Ok(()),
            }
        }
        SubjectRule::Pattern(pattern) => {
            let client_cn = cert
                .common_names()
                .and_then(|cns| cns.into_iter().next())
                .ok_or_else(|| {
                    format!(
                        "the subject pattern {pattern:?} needs a readable CN in the client certificate {:?}",
                        truncate(&cert.subject, 256)
                    )
                })?;
            let expanded = pattern.replace(CLIENT_CN, &regex_escape(&client_cn));
            let regex = regex_lite::Regex::new(&format!("^(?:{expanded})$"))
                .map_err(|e| format!("subject pattern {pattern:?}: {e}"))?;
            let Some(cns) = estuary_auth::common_names(&csr.subject) else {
                return Err(SubjectRefusal(
                    "the CSR has a CN in a string type the subject pattern cannot check (use UTF8String or PrintableString)"
                        .into(),
                ));
            };
            // A pattern speaks for the CN; every other attribute must be one the client
            // certificate has (no new organisation, UID, ...).
            let client_attributes: Vec<_> = cert
                .subject_name
                .0
                .iter()
                .flat_map(|rdn| rdn.0.iter())
                .collect();
            if let Some(extra) = csr
                .subject
                .0
                .iter()
                .flat_map(|rdn| rdn.0.iter())
                .filter(|atv| atv.oid != const_oid::db::rfc4519::CN)
                .find(|atv| !client_attributes.contains(atv))
            {
                return Err(SubjectRefusal(format!(
                    "a request authenticated by certificate {:?} may add no subject attribute but the CN \
                     (subject = {pattern:?}); the CSR has {} that the certificate does not",
                    truncate(&cert.subject, 256),
                    extra.oid
                )));
            }
            if let Some(san) = &csr.requested.subject_alt_name {
                if Some(san) != cert.subject_alt_name.as_ref() {
                    return Err(SubjectRefusal(format!(
                        "a request authenticated by certificate {:?} may only ask for its subjectAltName (or none) \
                         (subject = {pattern:?})",
                        cert.subject
                    )));
                }
            }
            if cns.is_empty() || !cns.iter().all(|cn| regex.is_match(cn)) {
                return Err(SubjectRefusal(format!(
                    "a request authenticated by certificate {:?} may only ask for a CN matching {pattern:?} \
                     ({CLIENT_CN} = {client_cn:?}); the CSR asks for {:?}",
                    cert.subject,
                    csr.subject.to_string()
                )));
            }
            Ok(())
        }
    }
}

/// The subjects a registration authority may ask for (`[registration_authorities.NAME]
/// subject`): every CN of the CSR must match. The RA speaks for its devices, so the label's
/// own subject rule (which compares with a client certificate) does not apply to it.
fn ra_subject_allowed(
    registration_authorities: &BTreeMap<String, RaRule>,
    requester: &Requester,
    csr: &VerifiedCsr,
) -> Result<(), SubjectRefusal> {
    let Requester::RegistrationAuthority { name, .. } = requester else {
        return Ok(());
    };
    let Some(rule) = registration_authorities.get(name) else {
        // `ra` in --dev: any subject.
        return Ok(());
    };
    let shown = estuary_ca::profile::pattern_text;
    if let Some(pattern) = &rule.subject {
        let cns = estuary_auth::common_names(&csr.subject).ok_or_else(|| {
            SubjectRefusal(
                "the CSR has a CN in a string type the registration authority's rule cannot check"
                    .into(),
            )
        })?;
        if cns.is_empty() || !cns.iter().all(|cn| pattern.is_match(cn)) {
            return Err(SubjectRefusal(format!(
                "registration authority {name} may only ask for CNs matching {:?}; the CSR asks for {:?}",
                shown(pattern),
                csr.subject.to_string()
            )));
        }
        // The pattern speaks for the whole subject: no organisation, serialNumber, UID, ...
        if let Some(other) = csr
            .subject
            .0
            .iter()
            .flat_map(|rdn| rdn.0.iter())
            .find(|atv| atv.oid != const_oid::db::rfc4519::CN)
        {
            return Err(SubjectRefusal(format!(
                "registration authority {name} may ask for CNs only; the CSR's subject also has {}",
                other.oid
            )));
        }
    }
    if let Some(san) = &csr.requested.subject_alt_name {
        let entries = estuary_wire::csr::san_strings(san);
        match (&rule.sans, &rule.subject) {
            (Some(pattern), _) => {
                if let Some(bad) = entries.iter().find(|e| !pattern.is_match(e)) {
                    return Err(SubjectRefusal(format!(
                        "registration authority {name} may only ask for subjectAltName entries matching {:?}; the CSR asks for {bad:?}",
                        shown(pattern)
                    )));
                }
            }
            (None, Some(_)) => {
                return Err(SubjectRefusal(format!(
                    "registration authority {name} may ask for no subjectAltName (its rule has no `sans`)"
                )))
            }
            (None, None) => {}
        }
    }
    Ok(())
}

/// A name as RFC 5280 §7.1 compares names: attribute by attribute, string values without
/// case and with whitespace collapsed (the RFC 4518 essentials), so `CN=ESTUARY  Issuing CA`
/// matches `CN=Estuary Issuing CA`.
pub(crate) fn comparable_name(name: &x509_cert::name::Name) -> ComparableName {
    name.0
        .iter()
        .map(|rdn| {
            let mut atvs: Vec<(String, String)> = rdn
                .0
                .iter()
                .map(|atv| {
                    let any = &atv.value;
                    let text = estuary_wire::name::directory_string(any).or_else(|| {
                        any.decode_as::<der::asn1::BmpString>()
                            .ok()
                            .map(|s| s.to_string())
                    });
                    let value = match text {
                        Some(t) => t
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ")
                            .to_lowercase(),
                        // Not a string: compare the encoding.
                        None => hex::encode(any.value()),
                    };
                    (atv.oid.to_string(), value)
                })
                .collect();
            atvs.sort();
            atvs
        })
        .collect()
}

/// A name in the form [`comparable_name`] gives.
pub(crate) type ComparableName = Vec<Vec<(String, String)>>;

/// `text` as a regular expression that matches exactly it.
fn regex_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 2);
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// RFC 7030 §4.2.2: the Subject and SubjectAltName of a re-enrollment request must be
/// identical to those of the certificate being renewed; the key may be the same or new.
pub(crate) fn check_reenroll_identity(
    cert: &estuary_auth::VerifiedClientCert,
    csr: &VerifiedCsr,
) -> Result<(), EstError> {
    if cert.subject_name != csr.subject {
        return Err(EstError::BadRequest(format!(
            "simplereenroll: the CSR's subject {:?} differs from the certificate being renewed ({:?}); \
             RFC 7030 §4.2.2 requires them to be identical",
            csr.subject.to_string(),
            cert.subject
        )));
    }
    if cert.subject_alt_name != csr.requested.subject_alt_name {
        return Err(EstError::BadRequest(
            "simplereenroll: the CSR's subjectAltName differs from the certificate being renewed; \
             RFC 7030 §4.2.2 requires them to be identical"
                .into(),
        ));
    }
    Ok(())
}

/// A request's identity once the label's rules accepted it.
#[derive(Debug)]
pub struct Admitted {
    /// The identity the request is made as.
    pub requester: Requester,
    /// For the renewal of a certificate of ours (the same subject, and the same
    /// subjectAltName or none): the label where its line began. The new certificate keeps
    /// it, so re-issuing under another label cannot widen what a `client-cert:label:` rule
    /// accepts. A certificate for another name is a new line that begins here.
    pub origin_label: Option<String>,
}

/// A refusal by the label's rules, with its metrics code.
#[derive(Debug)]
pub struct Refusal {
    /// The authorization failure ([`AuthFailure::NotAllowed`],
    /// [`AuthFailure::SubjectNotAllowed`]) for the metrics; `None` for a malformed request.
    pub code: Option<AuthFailure>,
    /// The error sent to the client.
    pub error: EstError,
}

/// The identities that `label` accepts for `operation`, best first (for simplereenroll,
/// only the certificate being renewed: RFC 7030 §4.2.2), or why none is.
pub fn accepted_identities<'a>(
    label: &LabelPolicy,
    label_name: &str,
    operation: Operation,
    candidates: &'a [Candidate],
) -> Result<Vec<&'a Candidate>, Refusal> {
    let accepted: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| {
            allowed_by(&label.auth, c)
                && (operation != Operation::SimpleReenroll
                    || matches!(
                        c.requester,
                        // A registration authority re-enrolls for a device whose
                        // certificate it checked (RFC 7030 §4.2.2 at the layer that sees it).
                        Requester::ClientCert(_) | Requester::RegistrationAuthority { .. }
                    ))
        })
        .collect();
    if !accepted.is_empty() {
        return Ok(accepted);
    }
    let refuse = |error| {
        Err(Refusal {
            code: Some(AuthFailure::NotAllowed),
            error,
        })
    };
    if operation == Operation::SimpleReenroll
        && !candidates
            .iter()
            .any(|c| matches!(c.requester, Requester::ClientCert(_)))
    {
        return refuse(EstError::Forbidden(
            "simplereenroll requires the certificate being renewed (issued by this CA, valid, not revoked) \
             as the TLS client certificate; use simpleenroll for a first enrollment"
                .into(),
        ));
    }
    refuse(EstError::Forbidden(format!(
        "label {label_name} does not accept {}; it accepts: {}",
        candidates
            .iter()
            .map(Candidate::describe)
            .collect::<Vec<_>>()
            .join(", "),
        label.auth.describe()
    )))
}

/// The first accepted identity whose subject rule this CSR satisfies (IoT Edge sends its
/// certificate and Basic together: the password still works for a subject the certificate
/// may not ask for), and RFC 7030 §4.2.2's identity check for a re-enrollment.
pub fn admit(
    label: &LabelPolicy,
    label_name: &str,
    registration_authorities: &BTreeMap<String, RaRule>,
    operation: Operation,
    accepted: &[&Candidate],
    csr: &VerifiedCsr,
) -> Result<Admitted, Refusal> {
    let rules_allow = |c: &Candidate| {
        subject_allowed(&label.subject, &c.requester, csr)
            .and_then(|()| ra_subject_allowed(registration_authorities, &c.requester, csr))
    };
    let Some(chosen) = accepted.iter().find(|c| rules_allow(c).is_ok()) else {
        let refusal = accepted
            .first()
            .and_then(|c| rules_allow(c).err())
            .unwrap_or_default();
        return Err(Refusal {
            code: Some(AuthFailure::SubjectNotAllowed),
            error: EstError::Forbidden(format!("label {label_name}: {refusal}")),
        });
    };
    let mut origin_label = None;
    if let (Requester::ClientCert(cert), Some(status)) = (&chosen.requester, &chosen.issued_under) {
        let renewal = cert.subject_name == csr.subject
            && csr
                .requested
                .subject_alt_name
                .as_ref()
                .is_none_or(|san| Some(san) == cert.subject_alt_name.as_ref());
        if renewal {
            origin_label = Some(status.origin_label.clone());
        }
    }
    if let (Operation::SimpleReenroll, Requester::ClientCert(cert)) = (operation, &chosen.requester)
    {
        check_reenroll_identity(cert, csr).map_err(|error| Refusal { code: None, error })?;
    }
    Ok(Admitted {
        requester: chosen.requester.clone(),
        origin_label,
    })
}
