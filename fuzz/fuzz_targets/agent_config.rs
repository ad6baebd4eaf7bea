//! The IoT Edge config file as the agent reads it, and renewal policies.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = estuary_client::agent::AgentConfig::parse(&text);
    let _ = estuary_client::agent::policy::Threshold::parse(&text);
});
