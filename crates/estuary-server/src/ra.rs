//! Registration-authority settings turned into the upstream client.

use std::path::Path;

use estuary_client::upstream::{parse_trust_anchors_pem, UpstreamClient, UpstreamConfig};
use estuary_client::EstUrl;

use crate::config::{UpstreamCredential, UpstreamSettings};

/// The client towards the upstream EST server, from `[upstream]` (relative paths are
/// relative to the data directory).
pub fn upstream_client(
    upstream: &UpstreamSettings,
    data_dir: &Path,
) -> Result<UpstreamClient, String> {
    let resolve = |p: &Path| {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            data_dir.join(p)
        }
    };
    let url = EstUrl::parse(&upstream.url)
        .map_err(|e| format!("[upstream] url {:?}: {e}", upstream.url))?;
    let ca_path = resolve(upstream.ca.as_deref().ok_or_else(|| {
        "[upstream] ca (--upstream-ca) is required: the root certificate that the upstream's TLS certificate chains to".to_string()
    })?);
    let anchors_pem = std::fs::read(&ca_path).map_err(|e| {
        format!(
            "[upstream] ca: cannot read {} (the upstream's root certificate, e.g. saved with `estuary client cacerts`): {e}",
            ca_path.display()
        )
    })?;
    let anchors = parse_trust_anchors_pem(&anchors_pem)
        .map_err(|e| format!("[upstream] ca {}: {e}", ca_path.display()))?;
    let mut config = UpstreamConfig::new(url, anchors);
    config.timeout = upstream.timeout;
    config.default_retry = upstream.timeout.max(std::time::Duration::from_secs(5));
    match &upstream.credential {
        UpstreamCredential::Basic { user, password } => {
            config.basic = Some((user.clone(), password.clone()));
        }
        UpstreamCredential::Certificate { cert, key } => {
            let chain = estuary_ca::bootstrap::read_pem_certificates(&resolve(cert))
                .map_err(|e| format!("[upstream] cert: {e}"))?;
            let key_path = resolve(key);
            let key_pem =
                zeroize::Zeroizing::new(std::fs::read_to_string(&key_path).map_err(|e| {
                    format!("[upstream] key: cannot read {}: {e}", key_path.display())
                })?);
            let block = pem::parse(key_pem.as_bytes())
                .map_err(|e| format!("[upstream] key {}: {e}", key_path.display()))?;
            config.identity = Some((chain, block.into_contents()));
        }
    }
    UpstreamClient::new(config).map_err(|e| e.to_string())
}
