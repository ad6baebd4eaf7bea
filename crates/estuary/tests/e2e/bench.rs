//! `estuary bench` against a real `serve --dev`: the counts it reports match what the server
//! recorded, status classes, open-loop pacing, and an unreachable server. Correctness only:
//! throughput and latency numbers belong in docs/bench.md, never in assertions.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::*;

/// A `--dev` server whose per-address rate limit is off (all load comes from 127.0.0.1).
fn start_server(data: &Path) -> Server {
    std::fs::create_dir_all(data).unwrap();
    std::fs::write(
        data.join("estuary.toml"),
        "[rate_limits]\nper_address_per_minute = 0\n",
    )
    .unwrap();
    Server::start(data, &["--dev"])
}

/// `estuary bench --url .. --ca .. --json ARGS`, which must succeed; its report.
fn bench(server: &Server, dir: &Path, args: &[&str]) -> Value {
    let url = server.url();
    let ca = server.ca_file();
    let mut all = vec![
        "bench",
        "--url",
        &url,
        "--ca",
        ca.to_str().unwrap(),
        "--json",
    ];
    all.extend_from_slice(args);
    serde_json::from_str(&estuary_ok(&all, dir)).unwrap()
}

/// The server's audit events (newest first).
fn audit(server: &Server, dir: &Path) -> Vec<Value> {
    let out = estuary_ok(
        &[
            "audit",
            "list",
            "--json",
            "--limit",
            "100000",
            "--data-dir",
            server.data_dir.to_str().unwrap(),
        ],
        dir,
    );
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn count(events: &[Value], operation: &str, outcome: &str, auth_method: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            e["operation"] == operation
                && e["outcome"] == outcome
                && e["auth_method"] == auth_method
        })
        .count()
}

fn status(report: &Value, class: &str) -> u64 {
    report["status"][class].as_u64().unwrap()
}

#[test]
fn enroll_and_reenroll_counts_match_the_servers_audit() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = start_server(&dir.join("data"));
    let pid = server.pid().to_string();

    let r = bench(
        &server,
        dir,
        &[
            "--op",
            "enroll",
            "--user",
            "estuser:estpwd",
            "--connections",
            "2",
            "--requests",
            "20",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(r["requests"], 20, "{r}");
    assert_eq!(r["answered"], 20, "{r}");
    assert_eq!(status(&r, "2xx"), 20, "{r}");
    assert_eq!(r["status_codes"]["200"], 20, "{r}");
    assert_eq!(r["connections_served"], 2, "{r}");
    assert_eq!(r["mode"], "closed");
    // The warm-up enrollment is reported apart from the 20.
    assert_eq!(r["warmup_status"], 200, "{r}");
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r["bench_cpu_ms_per_request"].is_number(), "{r}");
    assert_eq!(r["server"]["pid"], server.pid());
    assert!(r["server"]["peak_rss_kib"].as_u64().unwrap() > 0, "{r}");
    assert!(r["server"]["cpu_ms_per_request"].is_number(), "{r}");
    assert!(r["server"]["start_rss_kib"].as_u64().unwrap() > 0, "{r}");
    assert!(r["server"]["end_rss_kib"].as_u64().unwrap() > 0, "{r}");
    // The server's own process: /proc/PID/io is readable.
    assert!(
        r["server"]["storage_write_bytes_per_request"].is_number(),
        "{r}"
    );
    // Beside the server's CPU: the same work in one thread of the bench, and the ratio.
    assert_eq!(
        r["reference"]["work"], "verify a p256 CSR, issue with a p256 CA, PKCS#7",
        "{r}"
    );
    assert!(
        r["reference"]["ms_per_request"].as_f64().unwrap() > 0.0,
        "{r}"
    );
    assert!(r["server_to_reference"].as_f64().unwrap() > 0.0, "{r}");
    let events = audit(&server, dir);
    assert_eq!(count(&events, "simpleenroll", "issued", "basic"), 21);

    // reenroll: a pool of one certificate per connection (2 enrollments), then 20 renewals
    // authenticated by those certificates.
    let r = bench(
        &server,
        dir,
        &[
            "--op",
            "reenroll",
            "--user",
            "estuser:estpwd",
            "--connections",
            "2",
            "--requests",
            "20",
        ],
    );
    assert_eq!(
        (r["requests"].as_u64(), status(&r, "2xx")),
        (Some(20), 20),
        "{r}"
    );
    assert_eq!(r["connections_served"], 2, "{r}");
    assert_eq!(r["tls_handshakes"], 2, "keep-alive: {r}");
    let events = audit(&server, dir);
    assert_eq!(count(&events, "simpleenroll", "issued", "basic"), 23);
    assert_eq!(
        count(&events, "simplereenroll", "issued", "client-cert"),
        20
    );
    let renewers: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|e| e["operation"] == "simplereenroll")
        .filter_map(|e| e["requester"].as_str())
        .collect();
    assert_eq!(
        renewers.into_iter().collect::<Vec<_>>(),
        ["cert:CN=bench-renew-0", "cert:CN=bench-renew-1"]
    );

    // A new connection per request: one handshake each; the reference adds the server's side
    // of a handshake. Idle connections are held open beside the load and counted.
    let r = bench(
        &server,
        dir,
        &[
            "--user",
            "estuser:estpwd",
            "--connections",
            "2",
            "--requests",
            "6",
            "--new-connection-per-request",
            "--no-warmup",
            "--server-pid",
            &pid,
            "--idle-connections",
            "20",
        ],
    );
    assert_eq!(
        (status(&r, "2xx"), r["tls_handshakes"].as_u64()),
        (6, Some(6)),
        "{r}"
    );
    // Each connection slot's later handshakes resume its earlier session (TLS 1.3 tickets).
    assert!(r["tls_resumed"].as_u64().unwrap() >= 4, "{r}");
    assert!(r["warmup_status"].is_null());
    assert!(
        r["reference"]["work"]
            .as_str()
            .unwrap()
            .ends_with("+ the server side of a resumed TLS handshake (p256 server key)"),
        "{r}"
    );
    assert_eq!(r["idle"]["requested"], 20, "{r}");
    assert_eq!(r["idle"]["open_at_start"], 20, "{r}");
    assert_eq!(r["idle"]["open_at_end"], 20, "{r}");
    assert!(
        r["idle"]["server_rss_with_idle_kib"].as_u64().unwrap() > 0,
        "{r}"
    );
    assert_eq!(
        count(&audit(&server, dir), "simpleenroll", "issued", "basic"),
        29
    );
    server.stop();
}

#[test]
fn read_operations_and_refusals_are_counted_by_class() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = start_server(&dir.join("data"));
    for op in ["cacerts", "csrattrs"] {
        let r = bench(
            &server,
            dir,
            &["--op", op, "--connections", "2", "--requests", "20"],
        );
        assert_eq!(
            (r["requests"].as_u64(), status(&r, "2xx")),
            (Some(20), 20),
            "{op}: {r}"
        );
        assert_eq!(r["connections_served"], 2, "{r}");
    }

    // A wrong password: every answer a 4xx (401, or 429 while the server checks another
    // guess from this address), counted, and no certificate issued.
    let before = count(&audit(&server, dir), "simpleenroll", "issued", "basic");
    let r = bench(
        &server,
        dir,
        &[
            "--user",
            "estuser:wrong",
            "--connections",
            "2",
            "--requests",
            "10",
        ],
    );
    assert_eq!(r["requests"], 10, "{r}");
    assert_eq!(status(&r, "4xx"), 10, "{r}");
    assert_eq!(status(&r, "2xx") + status(&r, "202"), 0, "{r}");
    assert_eq!(r["connections_served"], 0, "{r}");
    assert!(r["status_codes"]["401"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(r["warmup_status"], 401, "{r}");
    assert_eq!(
        count(&audit(&server, dir), "simpleenroll", "issued", "basic"),
        before
    );
    server.stop();
}

#[test]
fn the_open_loop_paces_requests_at_the_rate() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = start_server(&dir.join("data"));
    let started = Instant::now();
    let r = bench(
        &server,
        dir,
        &[
            "--op",
            "cacerts",
            "--connections",
            "2",
            "--rate",
            "50/s",
            "--duration",
            "2s",
        ],
    );
    let wall = started.elapsed();
    assert_eq!(r["mode"], "open");
    assert_eq!(r["rate_per_s"], 50.0);
    // 50/s for 2 s: 100 requests due, the last at 1.98 s; sent on schedule, not as fast as
    // the server answers (which would take a small fraction of that).
    let n = r["requests"].as_u64().unwrap();
    assert!((95..=100).contains(&n), "{r}");
    assert_eq!(status(&r, "2xx"), n, "{r}");
    assert!(r["elapsed_s"].as_f64().unwrap() >= 1.8, "{r}");
    assert!(wall >= Duration::from_millis(1800));
    server.stop();
}

#[test]
fn an_unreachable_server_is_a_clear_error() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = start_server(&dir.join("data"));
    let ca = server.ca_file();
    server.stop();
    // A port that was just free: nothing listens there now.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("https://localhost:{port}/.well-known/est");
    let out = estuary(
        &[
            "bench",
            "--url",
            &url,
            "--ca",
            ca.to_str().unwrap(),
            "--op",
            "cacerts",
            "--json",
        ],
        dir,
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("cannot connect to") && stderr.contains("refused"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.stdout.is_empty());

    // Missing credentials for enroll: an error, not a run.
    let out = estuary(
        &["bench", "--url", &url, "--ca", ca.to_str().unwrap()],
        dir,
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--user"));
}

/// A server that goes away during the run: its refusals are counted as connection errors, the
/// run ends on time and reports them.
#[test]
fn a_server_that_stops_mid_run_shows_as_connection_errors() {
    let tmp = tempdir();
    let dir = tmp.path().to_path_buf();
    let server = start_server(&dir.join("data"));
    let (url, ca) = (server.url(), server.ca_file());
    let run = std::thread::spawn(move || {
        estuary(
            &[
                "bench",
                "--url",
                &url,
                "--ca",
                ca.to_str().unwrap(),
                "--op",
                "cacerts",
                "--connections",
                "2",
                "--new-connection-per-request",
                "--duration",
                "3s",
                "--json",
            ],
            &dir,
            None,
        )
    });
    std::thread::sleep(Duration::from_millis(1000));
    server.stop();
    let out = run.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status(&r, "2xx") > 0, "{r}");
    assert!(status(&r, "connection_errors") > 0, "{r}");
    assert_eq!(
        r["requests"].as_u64().unwrap(),
        r["answered"].as_u64().unwrap() + status(&r, "connection_errors")
    );
    assert!(
        r["errors"]
            .as_object()
            .unwrap()
            .keys()
            .any(|k| k.starts_with("connect")),
        "{r}"
    );
    assert_eq!(r["connections_served"], 2, "{r}");
}

#[test]
fn prefill_adds_records_through_the_store() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let server = start_server(&data);
    server.stop();
    let data_arg = data.to_str().unwrap();
    let out = estuary_ok(
        &["bench", "prefill", "--data-dir", data_arg, "--count", "50"],
        dir,
    );
    assert!(out.contains("prefilled 50"), "{out}");
    // A second run adds as many again (serials do not collide).
    estuary_ok(
        &["bench", "prefill", "--data-dir", data_arg, "--count", "50"],
        dir,
    );
    let certs: Value = serde_json::from_str(&estuary_ok(
        &[
            "certs",
            "list",
            "--json",
            "--subject",
            "prefill-",
            "--data-dir",
            data_arg,
        ],
        dir,
    ))
    .unwrap();
    assert_eq!(certs.as_array().unwrap().len(), 100);
    // No database: an error, not a new one.
    let out = estuary(
        &[
            "bench",
            "prefill",
            "--data-dir",
            dir.join("none").to_str().unwrap(),
            "--count",
            "1",
        ],
        dir,
        None,
    );
    assert!(!out.status.success());
    assert!(!dir.join("none").join("estuary.db").exists());
}

/// Regression: each wrong Basic password used to leave argon2's 19 MiB of working memory
/// resident (40 wrong passwords took the server from 19 to over 250 MiB, for good). Checks now
/// run on a few long-lived threads in reused memory: the growth is bounded by their number.
#[test]
fn wrong_passwords_do_not_grow_the_servers_memory() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = start_server(&dir.join("data"));
    let pid = server.pid().to_string();
    let rss_kib = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let before = rss_kib();
    for user in ["estuser:wrong-password", "nosuchuser:wrong-password"] {
        // One connection at a time: each waits for its 401 (the password gate answers 429 to a
        // second concurrent check from one address).
        let r = bench(
            &server,
            dir,
            &[
                "--user",
                user,
                "--new-connection-per-request",
                "--requests",
                "30",
                "--no-warmup",
            ],
        );
        assert_eq!(r["status_codes"]["401"], 30, "{r}");
    }
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    // Two to four checker threads of 19 MiB each, and some slack; it was over 230 MiB.
    assert!(grown_mib < 100, "the server grew by {grown_mib} MiB");
    server.stop();
}
