//! What a registration authority reads from the EST server above it: the answer to a
//! forwarded enrollment (status, `Content-Type`, `Retry-After`, `X-Estuary-Approval-Request`,
//! a certs-only PKCS#7 or a refusal text) and the parent's CRL, verified against its CA.
//!
//! Input: one byte for the status (an index into the statuses an EST server sends), three
//! header values each as a u8 length and that many bytes, then the body (also tried as a CRL).
#![no_main]
use estuary_client::upstream::{answer_outcome, UpstreamCrl};
use libfuzzer_sys::fuzz_target;

const OURS: &[u8] = include_bytes!("../fixtures/ours.der");
const STATUSES: [u16; 12] = [200, 202, 204, 400, 401, 403, 404, 429, 500, 503, 99, 999];

fn take<'a>(rest: &mut &'a [u8]) -> Option<&'a str> {
    let (&len, tail) = rest.split_first()?;
    let len = usize::from(len).min(tail.len());
    let (value, tail) = tail.split_at(len);
    *rest = tail;
    std::str::from_utf8(value).ok()
}

fuzz_target!(|data: &[u8]| {
    let Some((&status, mut rest)) = data.split_first() else {
        return;
    };
    let status = STATUSES[usize::from(status) % STATUSES.len()];
    let content_type = take(&mut rest);
    let retry_after = take(&mut rest);
    let approval = take(&mut rest);
    let _ = answer_outcome(status, content_type, retry_after, approval, rest);
    let _ = UpstreamCrl::parse(rest, &[OURS.to_vec()]);
});
