//! Registration-authority settings turned into the upstream client.

use std::path::Path;

use estuary_client::upstream::{parse_trust_anchors_pem, UpstreamClient, UpstreamConfig};
use estuary_client::EstUrl;

use crate::config::{UpstreamCredential, UpstreamSettings};
use crate::error::ServerError;

/// The client towards the upstream EST server, from `[upstream]` (relative paths are
/// relative to the data directory).
/// Also returns the pinned trust anchors (DER): the upstream's `/cacerts` must lead to one.
pub fn upstream_client(
    upstream: &UpstreamSettings,
    data_dir: &Path,
) -> Result<(UpstreamClient, Vec<Vec<u8>>), ServerError> {
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            data_dir.join(p)
        }
    };
    let url = EstUrl::parse(&upstream.url).map_err(|source| ServerError::UpstreamUrl {
        url: upstream.url.clone(),
        source: Box::new(source),
    })?;
    let ca_path = resolve(
        upstream
            .ca
            .as_deref()
            .ok_or(ServerError::UpstreamCaMissing)?,
    );
    let anchors_pem = std::fs::read(&ca_path).map_err(|source| ServerError::UpstreamCaRead {
        path: ca_path.clone(),
        source,
    })?;
    let anchors =
        parse_trust_anchors_pem(&anchors_pem).map_err(|source| ServerError::UpstreamCa {
            path: ca_path.clone(),
            source: Box::new(source),
        })?;
    let mut config = UpstreamConfig::new(url, anchors.clone());
    config.timeout = upstream.timeout;
    config.default_retry = upstream.timeout.max(std::time::Duration::from_secs(5));
    match &upstream.credential {
        UpstreamCredential::Basic { user, password } => {
            config.basic = Some((user.clone(), password.clone()));
        }
        UpstreamCredential::Certificate { cert, key } => {
            let chain = estuary_ca::bootstrap::read_pem_certificates(&resolve(cert))
                .map_err(ServerError::UpstreamCert)?;
            let key_path = resolve(key);
            let key_pem =
                zeroize::Zeroizing::new(std::fs::read_to_string(&key_path).map_err(|source| {
                    ServerError::UpstreamKeyRead {
                        path: key_path.clone(),
                        source,
                    }
                })?);
            let block =
                pem::parse(key_pem.as_bytes()).map_err(|source| ServerError::UpstreamKey {
                    path: key_path.clone(),
                    source,
                })?;
            config.identity = Some((chain, block.into_contents()));
        }
    }
    Ok((UpstreamClient::new(config)?, anchors))
}

/// Whether `chain` (the upstream's `/cacerts`, issuing CA first) is one this RA may serve and
/// trust: CA certificates only, each signed by the next, the last one a pinned anchor
/// (`[upstream] ca`), and the first the issuer of this RA's own certificate `ra_leaf`. A
/// parent, or whoever can pose as it, must not be able to hand the RA's devices another root,
/// add one, or make another CA under the root (an Edge CA) the one whose CRL counts.
pub fn chain_is_pinned(chain: &[Vec<u8>], pinned: &[Vec<u8>], ra_leaf: &[u8]) -> bool {
    use der::Decode;
    let (Some(first), Some(last)) = (chain.first(), chain.last()) else {
        return false;
    };
    let all_cas = chain.iter().all(|der| {
        x509_cert::Certificate::from_der(der).is_ok_and(|c| estuary_auth::certs::is_ca(&c))
    });
    all_cas
        && pinned.contains(last)
        && chain.windows(2).all(|pair| signed_by(&pair[0], &pair[1]))
        && signed_by(ra_leaf, first)
}

/// Whether `subject_der` is signed by the key of `issuer_der` (both certificates).
pub fn signed_by(subject_der: &[u8], issuer_der: &[u8]) -> bool {
    use der::Decode;
    let (Ok(parts), Ok(issuer)) = (
        estuary_wire::signature::split_signed(subject_der, "certificate"),
        x509_cert::Certificate::from_der(issuer_der),
    ) else {
        return false;
    };
    estuary_wire::signature::verify(
        &issuer.tbs_certificate.subject_public_key_info,
        &parts.algorithm,
        parts.tbs,
        parts.signature,
    )
    .is_ok()
}

/// The upstream's CA certificates in path order: the issuing CA first (the one no other
/// certificate of the set names as its issuer), then each one's issuer, the root last.
/// `/cacerts` is a certs-only PKCS#7 whose certificate SET is DER-sorted (RFC 5652 §5.1), so
/// its order says nothing. Certificates that are not on that path follow, as received.
pub fn order_chain(certificates: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    use der::Decode;
    let parsed: Vec<Option<x509_cert::Certificate>> = certificates
        .iter()
        .map(|d| x509_cert::Certificate::from_der(d).ok())
        .collect();
    let self_signed =
        |c: &x509_cert::Certificate| c.tbs_certificate.subject == c.tbs_certificate.issuer;
    // The issuing CA: issued by another certificate of the set, or the only one.
    let is_issuer_of_another = |i: usize| {
        let Some(ci) = &parsed[i] else { return false };
        parsed.iter().enumerate().any(|(j, cj)| {
            j != i
                && cj.as_ref().is_some_and(|cj| {
                    !self_signed(cj) && cj.tbs_certificate.issuer == ci.tbs_certificate.subject
                })
        })
    };
    let Some(start) = (0..parsed.len()).find(|&i| parsed[i].is_some() && !is_issuer_of_another(i))
    else {
        return certificates;
    };
    let mut order = vec![start];
    while order.len() < parsed.len() {
        let Some(current) = parsed[order[order.len() - 1]].as_ref() else {
            break;
        };
        if self_signed(current) {
            break;
        }
        let next = (0..parsed.len()).find(|&j| {
            !order.contains(&j)
                && parsed[j].as_ref().is_some_and(|cj| {
                    cj.tbs_certificate.subject == current.tbs_certificate.issuer
                        && signed_by(&certificates[order[order.len() - 1]], &certificates[j])
                })
        });
        match next {
            Some(j) => order.push(j),
            None => break,
        }
    }
    let mut ordered: Vec<Vec<u8>> = order.iter().map(|&i| certificates[i].clone()).collect();
    ordered.extend(
        certificates
            .iter()
            .enumerate()
            .filter(|(i, _)| !order.contains(i))
            .map(|(_, c)| c.clone()),
    );
    ordered
}
