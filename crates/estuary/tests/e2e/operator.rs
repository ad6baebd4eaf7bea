//! Operator experience (issue 11, items 6-9): `estuary user` without a terminal, short
//! passwords, `user remove`, comments kept in the config file; a busy admin port; the shipped
//! systemd unit; `ca import` with a wrong key password; a later `--san`.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::harness::*;

/// Runs `estuary ARGS` and waits at most `limit` for it to exit: a command that should fail
/// at start must not hang the test when it does not.
fn estuary_exits_within(args: &[&str], dir: &Path, limit: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "`estuary {}` still running after {limit:?}:\nstdout: {}\nstderr: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Item 7: the admin listener was only a WARN when its port was busy, and the server reported
/// ready with no /healthz. Now it is a start error that names admin_listen and how to turn it off.
#[test]
fn a_busy_admin_port_is_a_start_error() {
    let tmp = tempdir();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let data = tmp.path().join("data");
    let data_arg = data.to_str().unwrap();
    let out = estuary_exits_within(
        &[
            "serve",
            "--data-dir",
            data_arg,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            &addr,
        ],
        tmp.path(),
        Duration::from_secs(30),
    );
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(!all.contains("estuary: ready"), "{all}");
    assert!(
        all.contains(&addr) && all.contains("admin_listen") && all.contains("admin_listen = \"\""),
        "{all}"
    );
    drop(busy);
}
