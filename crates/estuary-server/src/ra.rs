//! Registration-authority settings turned into the upstream client.

use std::path::Path;

use estuary_client::upstream::{parse_trust_anchors_pem, UpstreamClient, UpstreamConfig};
use estuary_client::EstUrl;

use crate::config::{UpstreamCredential, UpstreamSettings};
use crate::error::ServerError;

/// The client towards the upstream EST server, from `[upstream]` (relative paths are
/// relative to the data directory).
pub fn upstream_client(
    upstream: &UpstreamSettings,
    data_dir: &Path,
) -> Result<UpstreamClient, ServerError> {
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
    let mut config = UpstreamConfig::new(url, anchors);
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
    Ok(UpstreamClient::new(config)?)
}
