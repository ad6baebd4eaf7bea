//! `estuary agent` and `estuary check` with IoT Edge config files, against a real server with
//! certificates that live a few seconds.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// The tutorial's config file, pointed at the test server, with an [agent] section.
fn tutorial_config(
    dir: &Path,
    url: &str,
    ca: &Path,
    device_rotate: bool,
    threshold: &str,
) -> String {
    format!(
        r#"[provisioning]
source = "dps"
global_endpoint = "https://global.azure-devices-provisioning.net"
id_scope = "0ne00000000"

[provisioning.attestation]
method = "x509"
registration_id = "myiotedgedevice"

[provisioning.attestation.identity_cert]
method = "est"
common_name = "myiotedgedevice"

[provisioning.attestation.identity_cert.auto_renew]
rotate_key = {device_rotate}
threshold = "{threshold}"
retry = "4%"

[cert_issuance.est]
    trusted_certs = [
        "file://{ca}",
    ]

[cert_issuance.est.auth]
username = "estuser"
password = "estpwd"

[cert_issuance.est.urls]
default = "{url}"

[edge_ca]
method = "est"

[edge_ca.auto_renew]
rotate_key = true
threshold = "{threshold}"
retry = "4%"

[agent]
state_dir = "{state}"
on_renew = "echo $ESTUARY_CERT_ID $(openssl pkey -in $ESTUARY_KEY_FILE -pubout | sha256sum | cut -c1-16) >> {log}"
"#,
        ca = ca.display(),
        state = dir.join("state").display(),
        log = dir.join("renewals.log").display(),
    )
}

struct AgentProcess(Child);

impl AgentProcess {
    fn start(dir: &Path, config: &Path) -> Self {
        let log = std::fs::File::create(dir.join("agent.log")).unwrap();
        AgentProcess(
            Command::new(BIN)
                .args(["agent", "--config"])
                .arg(config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn renewals(dir: &Path, id: &str) -> Vec<String> {
    std::fs::read_to_string(dir.join("renewals.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with(&format!("{id} ")))
        .map(|l| l.split(' ').nth(1).unwrap_or_default().to_string())
        .collect()
}

/// Waits (bounded) until `f` holds.
fn wait_for(what: &str, limit: Duration, dir: &Path, mut f: impl FnMut() -> bool) {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < limit,
            "timed out waiting for {what}; agent log:\n{}",
            std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn state_json(dir: &Path) -> serde_json::Value {
    std::fs::read(dir.join("state/state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
fn agent_with_the_tutorial_config_enrolls_and_renews_with_and_without_key_rotation() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev", "--validity", "6s"]);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        tutorial_config(dir, &server.url(), &server.ca_file(), false, "50%"),
    )
    .unwrap();

    let agent = AgentProcess::start(dir, &config);
    // Enrollment plus at least two renewals of each certificate.
    wait_for(
        "three device-id and three Edge CA certificates",
        Duration::from_secs(60),
        dir,
        || renewals(dir, "device-id").len() >= 3 && renewals(dir, "aziot-edged-ca").len() >= 3,
    );
    drop(agent);

    // rotate_key = false: the device key stays; rotate_key = true: the Edge CA key changes every time.
    let device = renewals(dir, "device-id");
    assert!(
        device.iter().all(|k| k == &device[0]),
        "device key must stay: {device:?}"
    );
    let edge = renewals(dir, "aziot-edged-ca");
    let distinct: std::collections::HashSet<_> = edge.iter().collect();
    assert_eq!(
        distinct.len(),
        edge.len(),
        "Edge CA key must change on each renewal: {edge:?}"
    );

    // The files on disk: certificate matches key, chains to the CA; keys are 0600.
    let state = dir.join("state");
    for id in ["device-id", "aziot-edged-ca"] {
        let cert = state.join(format!("{id}.cert.pem"));
        let key = state.join(format!("{id}.key.pem"));
        assert_eq!(
            x509(dir, cert.to_str().unwrap(), &["-pubkey"]),
            sh(&format!("openssl pkey -in {} -pubout", key.display()), dir)
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    // The Edge CA came back as a CA and signs a module certificate openssl accepts.
    let text = x509(
        dir,
        state.join("aziot-edged-ca.cert.pem").to_str().unwrap(),
        &["-text"],
    );
    assert!(
        text.contains("CA:TRUE, pathlen:0") && text.contains("aziot-edge CA myiotedgedevice"),
        "{text}"
    );
    sh(
        &format!(
            "openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout module.key -subj /CN=module -out module.csr 2>/dev/null && \
             openssl x509 -req -in module.csr -CA {s}/aziot-edged-ca.cert.pem -CAkey {s}/aziot-edged-ca.key.pem -CAcreateserial -days 1 -out module.pem 2>/dev/null",
            s = state.display()
        ),
        dir,
    );
    // (The Edge CA may have expired by now; check the chain at the time it was issued.)
    let verified = sh(
        &format!(
            "openssl verify -attime $(( $(date +%s) - 2 )) -CAfile {} -untrusted {}/aziot-edged-ca.cert.pem module.pem || \
             openssl verify -no_check_time -CAfile {} -untrusted {}/aziot-edged-ca.cert.pem module.pem",
            server.ca_file().display(),
            state.display(),
            server.ca_file().display(),
            state.display()
        ),
        dir,
    );
    assert!(verified.contains("module.pem: OK"), "{verified}");

    // agent status shows each certificate.
    let out = estuary(
        &["agent", "status", "--config", config.to_str().unwrap()],
        dir,
        None,
    );
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("device-id:")
            && status.contains("CN=myiotedgedevice")
            && status.contains("next renewal"),
        "{status}"
    );
}

#[test]
fn agent_retries_while_the_server_is_down_and_renews_when_it_is_back() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let server = Server::start(&data, &["--dev", "--validity", "8s"]);
    let port = server.port;
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        tutorial_config(dir, &server.url(), &server.ca_file(), true, "50%"),
    )
    .unwrap();
    let agent = AgentProcess::start(dir, &config);
    wait_for(
        "the first certificate",
        Duration::from_secs(30),
        dir,
        || !renewals(dir, "device-id").is_empty(),
    );

    // The server goes away before the renewal is due.
    assert!(server.stop().success());
    wait_for(
        "a failed renewal attempt",
        Duration::from_secs(30),
        dir,
        || state_json(dir)["certs"]["device-id"]["last_error"].is_string(),
    );
    let failed = renewals(dir, "device-id").len();
    // It keeps retrying (the error is recorded with a next retry time)...
    assert!(state_json(dir)["certs"]["device-id"]["next_retry"].is_i64());
    // ...and the current certificate and key are still there.
    assert!(
        dir.join("state/device-id.cert.pem").exists()
            && dir.join("state/device-id.key.pem").exists()
    );

    // The server comes back on the same port: the agent renews.
    let _server = Server::start_with_listen(
        &data,
        &["--dev", "--validity", "8s"],
        &["--listen", &format!("127.0.0.1:{port}")],
    );
    wait_for(
        "a renewal after the outage",
        Duration::from_secs(30),
        dir,
        || {
            renewals(dir, "device-id").len() > failed
                && state_json(dir)["certs"]["device-id"]["last_error"].is_null()
        },
    );
    drop(agent);
}

#[test]
fn bootstrap_flow_gets_an_est_identity_then_the_device_cert_and_falls_back_when_it_expires() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout mfg.key -out mfg.pem \
           -subj '/CN=Manufacturer CA' -days 30 -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null && \
         openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout boot.key -out boot.csr -subj /CN=myiotedgedevice 2>/dev/null && \
         printf 'basicConstraints=CA:FALSE\\nkeyUsage=critical,digitalSignature\\nextendedKeyUsage=clientAuth\\n' > boot.ext && \
         openssl x509 -req -in boot.csr -CA mfg.pem -CAkey mfg.key -CAcreateserial -days 30 -extfile boot.ext -out boot.pem 2>/dev/null",
        dir,
    );
    drop(Server::start(&data, &[]));
    let cfg = std::fs::read_to_string(data.join("estuary.toml"))
        .unwrap()
        .replace(
            "bootstrap_ca = []",
            &format!("bootstrap_ca = [\"{}\"]", dir.join("mfg.pem").display()),
        )
        // Bootstrap certificates only where a label names them.
        .replace(
            "[default]\nprofile = \"device\"\n",
            "[default]\nprofile = \"device\"\nauth = [\"basic\", \"client-cert\", \"bootstrap\"]\n",
        );
    std::fs::write(data.join("estuary.toml"), cfg).unwrap();
    let server = Server::start(&data, &["--validity", "6s"]);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[provisioning.attestation]
method = "x509"
registration_id = "myiotedgedevice"
[provisioning.attestation.identity_cert]
method = "est"
common_name = "myiotedgedevice"
[cert_issuance.est]
trusted_certs = ["file://{ca}"]
[cert_issuance.est.auth]
bootstrap_identity_cert = "file://{dir}/boot.pem"
bootstrap_identity_pk = "file://{dir}/boot.key"
[cert_issuance.est.identity_auto_renew]
rotate_key = true
threshold = "50%"
retry = "4%"
[cert_issuance.est.urls]
default = "{url}"
[agent]
state_dir = "{dir}/state"
"#,
            ca = server.ca_file().display(),
            dir = dir.display(),
            url = server.url()
        ),
    )
    .unwrap();
    let once = || {
        estuary(
            &["agent", "--config", config.to_str().unwrap(), "--once"],
            dir,
            None,
        )
    };

    // First pass: bootstrap cert -> EST identity cert -> device cert.
    let out = once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(state_json(dir)["certs"]["est-id"]["used_bootstrap"]
        .as_bool()
        .unwrap());
    let log = server.log_text();
    assert!(
        log.contains("bootstrap-cert"),
        "the EST identity came from the bootstrap cert"
    );
    assert!(
        log.contains("\"client-cert\""),
        "the device cert came through the EST identity cert"
    );
    let est_id = x509(dir, "state/est-id.cert.pem", &["-text"]);
    assert!(est_id.contains("TLS Web Client Authentication") && est_id.contains("myiotedgedevice"));
    let first_device_serial = x509(dir, "state/device-id.cert.pem", &["-serial"]);

    // Everything expires; the next pass falls back to the bootstrap certificate and recovers.
    std::thread::sleep(Duration::from_secs(7));
    let out = once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = state_json(dir);
    assert!(
        state["certs"]["est-id"]["used_bootstrap"]
            .as_bool()
            .unwrap(),
        "{state}"
    );
    assert_eq!(
        state["certs"]["est-id"]["issued_count"].as_u64(),
        Some(2),
        "{state}"
    );
    assert_ne!(
        x509(dir, "state/device-id.cert.pem", &["-serial"]),
        first_device_serial
    );
    let out = estuary(
        &["agent", "status", "--config", config.to_str().unwrap()],
        dir,
        None,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("bootstrap certificate"));
}

#[test]
fn config_errors_name_the_key_and_check_reports_problems_with_hints() {
    let tmp = tempdir();
    let dir = tmp.path();
    // A server on 127.0.0.2, whose certificate names only 127.0.0.1, ::1 and localhost.
    let server =
        Server::start_with_listen(&dir.join("data"), &["--dev"], &["--listen", "127.0.0.2:0"]);
    let config = dir.join("config.toml");
    let check = |config_text: &str| {
        std::fs::write(&config, config_text).unwrap();
        let out = estuary(&["check", "--config", config.to_str().unwrap()], dir, None);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let url = format!("https://127.0.0.2:{}/.well-known/est", server.port);
    let (ok, out) = check(&tutorial_config(dir, &url, &server.ca_file(), false, "80%"));
    assert!(!ok, "{out}");
    assert!(
        out.contains("✘") && out.contains("127.0.0.2") && out.contains("--san 127.0.0.2"),
        "{out}"
    );
    drop(server);

    // The same server with the IP added to its certificate passes every check.
    let server = Server::start_with_listen(
        &dir.join("data"),
        &["--dev", "--san", "127.0.0.2"],
        &["--listen", "127.0.0.2:0"],
    );
    let url = format!("https://127.0.0.2:{}/.well-known/est", server.port);
    let good = tutorial_config(dir, &url, &server.ca_file(), false, "80%");
    let (ok, out) = check(&good);
    assert!(ok, "{out}");
    assert!(
        out.contains("✔") && !out.contains("✘") && out.contains("issued certificate first"),
        "{out}"
    );

    // Wrong credentials.
    let (ok, out) = check(&good.replace("password = \"estpwd\"", "password = \"wrong\""));
    assert!(!ok);
    assert!(
        out.contains("credentials rejected") && out.contains("[cert_issuance.est.auth]"),
        "{out}"
    );

    // The tutorial's "60m" works for the agent but IoT Edge would reject it: check flags it.
    let (ok, out) = check(&good.replace(
        "threshold = \"80%\"\nretry = \"4%\"\n\n[cert_issuance",
        "threshold = \"60m\"\nretry = \"4%\"\n\n[cert_issuance",
    ));
    assert!(!ok);
    assert!(out.contains("60min") && out.contains("IoT Edge"), "{out}");

    // Config errors name the key (agent and check alike).
    std::fs::write(&config, good.replace("retry = \"4%\"", "retry = \"soon\"")).unwrap();
    let out = estuary(
        &["agent", "--config", config.to_str().unwrap(), "--once"],
        dir,
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("provisioning.attestation.identity_cert.auto_renew.retry")
            && err.contains("accepted"),
        "{err}"
    );
    let (ok, out) = check(&good.replace("https://127.0.0.2", "http://127.0.0.2"));
    assert!(
        !ok && out.contains("cert_issuance.est.urls.default"),
        "{out}"
    );

    // --once exits non-zero when a certificate is missing afterwards (the server is gone).
    drop(server);
    std::fs::write(&config, &good).unwrap();
    let out = estuary(
        &["agent", "--config", config.to_str().unwrap(), "--once"],
        dir,
        None,
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing or expired: device-id"), "{err}");
    let out = estuary(
        &["agent", "status", "--config", config.to_str().unwrap()],
        dir,
        None,
    );
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("no certificate yet") && status.contains("cannot connect"),
        "{status}"
    );
}

/// libfaketime (Debian package `faketime`), to move the agent's wall clock while it runs.
fn libfaketime() -> String {
    let out = Command::new("sh")
        .args([
            "-c",
            "dpkg -L libfaketime 2>/dev/null | grep 'libfaketimeMT.so.1$'",
        ])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !path.is_empty() && Path::new(&path).exists(),
        "libfaketime is not installed; `.ci/run` installs it (apt-get install faketime)"
    );
    path
}

#[test]
fn a_clock_jump_is_noticed_and_the_due_renewal_happens_without_a_storm() {
    let tmp = tempdir();
    let dir = tmp.path();
    let lib = libfaketime();
    let server = Server::start(&dir.join("data"), &["--dev", "--validity", "1h"]);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        tutorial_config(dir, &server.url(), &server.ca_file(), false, "80%"),
    )
    .unwrap();
    let clock = dir.join("clock");
    std::fs::write(&clock, "+0\n").unwrap();
    let log = std::fs::File::create(dir.join("agent.log")).unwrap();
    // Only the agent's wall clock is faked; its timers (monotonic) run as usual.
    let child = Command::new(BIN)
        .args(["agent", "--config"])
        .arg(&config)
        .env("LD_PRELOAD", &lib)
        .env("FAKETIME_TIMESTAMP_FILE", &clock)
        .env("FAKETIME_NO_CACHE", "1")
        .env("FAKETIME_DONT_FAKE_MONOTONIC", "1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _agent = AgentProcess(child);
    wait_for(
        "the first certificate",
        Duration::from_secs(30),
        dir,
        || renewals(dir, "device-id").len() == 1,
    );

    // The machine was suspended (or its clock corrected) by 50 minutes: 80% of the 1-hour
    // certificate has passed. The agent must notice within its longest sleep (30 s).
    std::fs::write(&clock, "+50m\n").unwrap();
    let jumped = Instant::now();
    wait_for(
        "the renewal after the clock jump",
        Duration::from_secs(60),
        dir,
        || renewals(dir, "device-id").len() >= 2,
    );
    assert!(
        jumped.elapsed() <= Duration::from_secs(50),
        "noticed after {:?}",
        jumped.elapsed()
    );
    // The new certificate also looks due to the fast clock; it is not renewed again before the
    // retry period (4% of an hour) has passed.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        renewals(dir, "device-id").len(),
        2,
        "renewal storm with a clock running ahead"
    );
}

/// A --dev server with a label `manual` (profile device, approval manual, Retry-After 1 s).
pub(crate) fn manual_approval_server(data: &Path) -> Server {
    drop(Server::start(data, &["--dev"]));
    let path = data.join("estuary.toml");
    let config = std::fs::read_to_string(&path).unwrap().replace(
        "approval_retry_after = \"60s\"",
        "approval_retry_after = \"1s\"",
    );
    assert!(config.contains("approval_retry_after = \"1s\""));
    std::fs::write(
        &path,
        format!("{config}\n[labels.manual]\nprofile = \"device\"\napproval = \"manual\"\n"),
    )
    .unwrap();
    Server::start(data, &["--dev"])
}

/// RFC 7030 §4.2.3: the agent resends the same CSR after a 202, so approving the one request
/// that waits completes the enrollment (it used to send a new key and CSR on every retry).
#[test]
fn agent_resends_the_same_request_until_it_is_approved() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let server = manual_approval_server(&data);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"[provisioning.attestation]
method = "x509"
registration_id = "waiting-device"
[provisioning.attestation.identity_cert]
method = "est"
common_name = "waiting-device"
url = "{url}/manual"
[cert_issuance.est]
trusted_certs = ["file://{ca}"]
[cert_issuance.est.auth]
username = "estuser"
password = "estpwd"
[agent]
state_dir = "{state}"
on_renew = "echo $ESTUARY_CERT_ID x >> {log}"
"#,
            url = server.url(),
            ca = server.ca_file().display(),
            state = dir.join("state").display(),
            log = dir.join("renewals.log").display(),
        ),
    )
    .unwrap();

    // --once: 202; it says what to run, with the id of the waiting request, and exits 75
    // (EX_TEMPFAIL, as `client enroll`): run it again once approved. It used to say "the agent
    // sends the same request again in 60s", though --once exits, and exit 1.
    let out = estuary(
        &["agent", "--config", config.to_str().unwrap(), "--once"],
        dir,
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(
        err.contains("once it is approved, run `estuary agent --once` again")
            && !err.contains("the agent sends the same request again in"),
        "{err}"
    );
    let ids = pending_ids(dir, &data);
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert!(
        err.contains(&format!("estuary requests approve {}", ids[0])),
        "{err}"
    );

    // The running agent asks again after each Retry-After (1 s), always the same request.
    let agent = AgentProcess::start(dir, &config);
    server.wait_for_log("status=202", 4);
    assert_eq!(pending_ids(dir, &data), ids, "one request, resent");
    let status = estuary(
        &["agent", "status", "--config", config.to_str().unwrap()],
        dir,
        None,
    );
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(
        status.contains(&format!("estuary requests approve {}", ids[0])),
        "{status}"
    );

    estuary_ok(
        &[
            "requests",
            "approve",
            &ids[0].to_string(),
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir,
    );
    wait_for(
        "the approved certificate",
        Duration::from_secs(30),
        dir,
        || renewals(dir, "device-id").len() == 1,
    );
    drop(agent);
    let state = dir.join("state");
    assert_eq!(
        x509(
            dir,
            state.join("device-id.cert.pem").to_str().unwrap(),
            &["-pubkey"]
        ),
        sh(
            &format!(
                "openssl pkey -in {}/device-id.key.pem -pubout",
                state.display()
            ),
            dir
        )
    );
    assert!(!state.join("device-id.pending.csr.pem").exists());
    assert!(!state.join("device-id.pending.key.pem").exists());
    assert!(pending_ids(dir, &data).is_empty());
}

/// `--once` means "make sure the certificates exist now": it tries again whatever back-off an
/// earlier failure stored, and fails while a certificate is missing. A config change resets the
/// back-off of the running agent too; `agent status` shows the last error and the next retry.
#[test]
fn once_ignores_backoff_and_a_config_change_resets_it() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev"]);
    let config = dir.join("config.toml");
    let good = tutorial_config(dir, &server.url(), &server.ca_file(), false, "80%");
    let bad = good.replace("password = \"estpwd\"", "password = \"wrong\"");
    std::fs::write(&config, &bad).unwrap();
    let once = || {
        let out = estuary(
            &["agent", "--config", config.to_str().unwrap(), "--once"],
            dir,
            None,
        );
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = once();
    assert!(!ok && err.contains("401"), "{err}");
    server.wait_for_log("status=401", 2);
    let out = estuary(
        &["agent", "status", "--config", config.to_str().unwrap()],
        dir,
        None,
    );
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        status.contains("next retry:") && status.contains("last error:    server answered 401"),
        "{status}"
    );

    // The second --once tries again (a retry time lies ~an hour ahead) and still fails.
    let (ok, err) = once();
    assert!(
        !ok,
        "--once must fail while certificates are missing: {err}"
    );
    assert!(err.contains("missing or expired: device-id"), "{err}");
    server.wait_for_log("status=401", 4);

    // The password is fixed: the running agent does not wait for the stored retry time.
    std::fs::write(&config, &good).unwrap();
    let agent = AgentProcess::start(dir, &config);
    wait_for(
        "enrollment right after the config change",
        Duration::from_secs(15),
        dir,
        || !renewals(dir, "device-id").is_empty() && !renewals(dir, "aziot-edged-ca").is_empty(),
    );
    drop(agent);
    assert!(state_json(dir)["certs"]["device-id"]["last_error"].is_null());
}

/// `threshold = "60m"` with certificates that live 20 s (as docs/agent.md once suggested with
/// 2-minute ones): one warning per certificate, renewal at half the life actually issued, and
/// `agent status` never shows a next renewal before the certificate's notBefore. It used to
/// renew every retry period (about a second here).
#[test]
fn a_threshold_longer_than_the_life_warns_once_and_does_not_storm() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev", "--validity", "20s"]);
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        tutorial_config(dir, &server.url(), &server.ca_file(), false, "60m"),
    )
    .unwrap();
    let agent = AgentProcess::start(dir, &config);
    wait_for(
        "the first certificates",
        Duration::from_secs(30),
        dir,
        || !renewals(dir, "device-id").is_empty() && !renewals(dir, "aziot-edged-ca").is_empty(),
    );
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        renewals(dir, "device-id").len(),
        1,
        "renewed before half of a 20 s life had passed"
    );
    let out = estuary(
        &["agent", "status", "--config", config.to_str().unwrap()],
        dir,
        None,
    );
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.trim_start().starts_with(name))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {status}"))
    };
    // Same format (YYYY-MM-DD HH:MM:SSZ): the strings order like the times.
    assert!(field("next renewal") > field("valid from"), "{status}");
    // Half the life later it renews, once.
    wait_for(
        "the renewal at half the life",
        Duration::from_secs(30),
        dir,
        || renewals(dir, "device-id").len() >= 2,
    );
    drop(agent);
    let log = std::fs::read_to_string(dir.join("agent.log")).unwrap();
    let warnings = log
        .lines()
        .filter(|l| l.contains("is longer than the server allows for this certificate"))
        .count();
    assert_eq!(warnings, 2, "one warning per certificate:\n{log}");
    assert!(renewals(dir, "device-id").len() <= 3, "{log}");
}

/// The production guide's Edge CA label (`auth = []` until named) with `[edge_ca] url` set:
/// `check` shows the server's reason and points at the credentials, not at the URL that is
/// already set; `[edge_ca]` credentials of its own then pass, and the agent uses them.
#[test]
fn check_names_the_edge_ca_labels_auth_rule_and_edge_ca_credentials_work() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    for user in ["estuser", "edgeadmin"] {
        add_user(dir, &data, user, "a-long-enough-password");
    }
    let server = Server::start(&data, &[]);
    let edge_url = format!("{}/edge-ca", server.url());
    let config = dir.join("config.toml");
    let base = tutorial_config(dir, &server.url(), &server.ca_file(), false, "80%")
        .replace(
            "password = \"estpwd\"",
            "password = \"a-long-enough-password\"",
        )
        .replace(
            "[edge_ca]\nmethod = \"est\"\n",
            &format!("[edge_ca]\nmethod = \"est\"\nurl = \"{edge_url}\"\n"),
        );
    assert!(base.contains(&edge_url));
    std::fs::write(&config, &base).unwrap();
    let out = estuary(&["check", "--config", config.to_str().unwrap()], dir, None);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{text}");
    let failure = text
        .split("✘ aziot-edged-ca: enrollment")
        .nth(1)
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        failure.contains("label edge-ca does not accept")
            && failure.contains("it accepts")
            && failure.contains("[edge_ca] credentials of its own")
            && failure.contains("username/password")
            && !failure.contains("set [edge_ca] url"),
        "{text}"
    );
    assert!(text.contains("✔ device-id: enrollment"), "{text}");
    drop(server);

    // The label names its identity; [edge_ca] gets credentials of its own.
    let path = data.join("estuary.toml");
    let server_config = std::fs::read_to_string(&path).unwrap().replace(
        "[labels.edge-ca]\nprofile = \"edge-ca\"\nauth = []",
        "[labels.edge-ca]\nprofile = \"edge-ca\"\nauth = [\"basic:edgeadmin\"]",
    );
    assert!(server_config.contains("basic:edgeadmin"));
    std::fs::write(&path, server_config).unwrap();
    let server = Server::start_with_listen(
        &data,
        &[],
        &[
            "--listen",
            &format!("127.0.0.1:{}", server_port_of(&edge_url)),
        ],
    );
    let with_own = base.replace(
        &format!("url = \"{edge_url}\"\n"),
        &format!(
            "url = \"{edge_url}\"\nusername = \"edgeadmin\"\npassword = \"a-long-enough-password\"\n"
        ),
    );
    std::fs::write(&config, &with_own).unwrap();
    let out = estuary(&["check", "--config", config.to_str().unwrap()], dir, None);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    let out = estuary(
        &["agent", "--config", config.to_str().unwrap(), "--once"],
        dir,
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(server.log_text().contains("label=\"edge-ca\""));
    assert!(
        x509(dir, "state/aziot-edged-ca.cert.pem", &["-text"]).contains("CA:TRUE"),
        "the Edge CA is a CA"
    );
}

fn server_port_of(url: &str) -> u16 {
    url.split(':')
        .nth(2)
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap()
}

/// Regression: the default state directory was /var/lib/estuary/agent, inside the server's
/// production data directory, so an agent run as root on a server host put root-owned device
/// keys into the service's directory. It is /var/lib/estuary-agent now.
#[test]
fn the_default_state_directory_is_outside_the_servers_data_directory() {
    let tmp = tempdir();
    let out = estuary(&["agent", "--help"], tmp.path(), None);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("/var/lib/estuary-agent"), "{help}");
    assert!(!help.contains("/var/lib/estuary/"), "{help}");
}

/// Regression: `estuary check` without a config file printed `✘ config file:
/// /etc/aziot/config.toml: No such file or directory` with the hint "fix the named key".
#[test]
fn check_without_a_config_file_says_to_name_one() {
    let tmp = tempdir();
    let dir = tmp.path();
    let out = estuary(&["check", "--config", "absent.toml"], dir, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("✘ config file: absent.toml:"), "{stdout}");
    assert!(
        stdout.contains("--config FILE") && stdout.contains("/etc/aziot/config.toml"),
        "{stdout}"
    );
    assert!(!stdout.contains("fix the named key"), "{stdout}");
}

/// `[agent] renewal_jitter`: the next renewal of each certificate comes earlier than its
/// threshold, never before half the life, and is the same after a restart.
#[test]
fn renewal_jitter_moves_the_renewal_earlier_and_survives_a_restart() {
    let tmp = tempdir();
    let dir = tmp.path();
    let server = Server::start(&dir.join("data"), &["--dev", "--validity", "1h"]);
    let config = dir.join("config.toml");
    let text = tutorial_config(dir, &server.url(), &server.ca_file(), false, "80%")
        .replace("[agent]\n", "[agent]\nrenewal_jitter = \"40%\"\n");
    std::fs::write(&config, text).unwrap();
    let config = config.to_str().unwrap();
    let out = estuary(&["agent", "--config", config, "--once"], dir, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = || estuary_ok(&["agent", "status", "--config", config], dir);
    let first = status();
    let unix = |value: &str| {
        let format =
            time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
        time::PrimitiveDateTime::parse(value, &format)
            .unwrap_or_else(|e| panic!("{value:?}: {e}"))
            .assume_utc()
            .unix_timestamp()
    };
    let fields = |name: &str| -> Vec<i64> {
        first
            .lines()
            .filter(|l| l.trim_start().starts_with(name))
            .filter_map(|l| l.split_once(':'))
            .map(|(_, v)| unix(v.trim().trim_end_matches(" (EXPIRED)")))
            .collect()
    };
    let (from, until, next) = (
        fields("valid from"),
        fields("expires"),
        fields("next renewal"),
    );
    assert_eq!((from.len(), until.len(), next.len()), (2, 2, 2), "{first}");
    let mut moved = 0;
    for i in 0..2 {
        let life = until[i] - from[i];
        let threshold = from[i] + life * 8 / 10;
        let half = from[i] + life / 2;
        // Seconds in the display: one second of slack at each end.
        assert!(
            next[i] <= threshold + 1 && next[i] >= half - 1,
            "certificate {i}: next renewal {} s after notBefore, life {life} s\n{first}",
            next[i] - from[i]
        );
        if next[i] < threshold - 1 {
            moved += 1;
        }
    }
    assert!(moved >= 1, "jitter moved neither renewal:\n{first}");
    // A restart does not re-roll it.
    let out = estuary(&["agent", "--config", config, "--once"], dir, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(status(), first);
    drop(server);
}
