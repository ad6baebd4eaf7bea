//! Synthetic certificate records for `estuary bench prefill` and the `storebench` example
//! (which includes this file by path: it uses nothing else of the binary).

use estuary_store::{AuditRecord, CertificateRecord, Outcome};

/// The synthetic certificates' validity (a year: they stay out of `--expiring-within` lists
/// of days, and their audit events, dated now, out of the hourly pruning).
const VALIDITY_SECONDS: i64 = 365 * 86_400;

/// The `i`th synthetic record of run `run_id`. Shaped like a real one where the store's cost
/// depends on it: a serial from the CA's own generator (time first, then random bits, so the
/// records sort where real ones issued now would) and thumbprints that are hashes of a
/// 600-byte placeholder DER holding the serial (random keys for the thumbprint index).
pub fn record(run_id: u64, i: u64) -> anyhow::Result<(CertificateRecord, AuditRecord)> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let serial_number = estuary_ca::issue::random_serial()?;
    let serial = estuary_ca::issue::hex_lower(serial_number.as_bytes());
    let mut der = vec![0u8; 600];
    der[..serial_number.as_bytes().len()].copy_from_slice(serial_number.as_bytes());
    let certificate = CertificateRecord {
        serial: serial.clone(),
        subject: format!("CN=prefill-{i}"),
        sans: vec![],
        not_before: now,
        not_after: now + VALIDITY_SECONDS,
        sha256_thumbprint: estuary_ca::issue::thumbprint_sha256(&der),
        sha1_thumbprint: estuary_ca::issue::thumbprint_sha1(&der),
        profile: "device".into(),
        label: String::new(),
        origin_label: String::new(),
        requester: "bench-prefill".into(),
        key_type: "p256".into(),
        issued_at: now,
        revoked_at: None,
        der,
    };
    let audit = AuditRecord {
        time: now,
        request_id: format!("prefill-{run_id:016x}-{i}"),
        peer: "127.0.0.1:0".into(),
        requester: "bench-prefill".into(),
        auth_method: "basic".into(),
        label: String::new(),
        operation: "simpleenroll".into(),
        outcome: Outcome::Issued,
        status: 200,
        serial: Some(serial),
        reason: None,
    };
    Ok((certificate, audit))
}
