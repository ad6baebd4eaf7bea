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

fn output_text(out: &Output) -> String {
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
    let all = output_text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(!all.contains("estuary: ready"), "{all}");
    // Review finding: "listening on https://..." was printed before the admin port failed.
    assert!(!all.contains("listening"), "{all}");
    assert!(
        all.contains(&addr) && all.contains("admin_listen") && all.contains("admin_listen = \"\""),
        "{all}"
    );
    drop(busy);
}

/// Item 6: `user add` without a terminal failed with "No such device or address (os error 6)";
/// short passwords were accepted; there was no `user remove`; every change rewrote the config
/// file from scratch, dropping the operator's comments.
#[test]
fn user_add_remove_list_without_a_terminal_keep_the_config_comments() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let data_arg = data.to_str().unwrap();
    // A data directory as the first start writes it, then commented by the operator.
    let server = Server::start(&data, &[]);
    server.stop();
    let config = data.join("estuary.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.insert_str(0, "# Site: plant 7. Ticket OPS-1234.\n");
    text = text.replace(
        "[labels.device]",
        "# devices of line 3 use this label\n[labels.device]",
    );
    std::fs::write(&config, &text).unwrap();

    // No terminal, no --password-stdin: a message that says what to do (stdin is /dev/null).
    let out = estuary(&["user", "add", "fleet", "--data-dir", data_arg], dir, None);
    let all = output_text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("--password-stdin"), "{all}");
    assert!(!all.contains("os error 6"), "{all}");

    // Too short: refused, nothing written.
    let out = estuary(
        &[
            "user",
            "add",
            "fleet",
            "--password-stdin",
            "--data-dir",
            data_arg,
        ],
        dir,
        Some(b"s3cret\n"),
    );
    let all = output_text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("too short") && all.contains("12"), "{all}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), text);

    for user in ["fleet", "edgeadmin"] {
        let out = estuary(
            &[
                "user",
                "add",
                user,
                "--password-stdin",
                "--data-dir",
                data_arg,
            ],
            dir,
            Some(b"long enough passphrase\n"),
        );
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let list = |dir: &Path| {
        let out = estuary(&["user", "list", "--data-dir", data_arg], dir, None);
        assert!(out.status.success(), "{}", output_text(&out));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(list(dir), "fleet\nedgeadmin\n");
    let now = std::fs::read_to_string(&config).unwrap();
    assert!(
        now.contains("# Site: plant 7. Ticket OPS-1234.\n")
            && now.contains("# devices of line 3 use this label\n[labels.device]")
            && now.contains("# HTTP Basic users"),
        "{now}"
    );

    // The server accepts the user; removing it takes effect on reload.
    let server = Server::start(&data, &[]);
    let csr = openssl_csr(
        dir,
        "d1",
        &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        "/CN=d1",
        &[],
    );
    let fleet = basic("fleet", "long enough passphrase");
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&fleet),
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let out = estuary(
        &["user", "remove", "nobody", "--data-dir", data_arg],
        dir,
        None,
    );
    let all = output_text(&out);
    assert!(
        !out.status.success() && all.contains("nobody") && all.contains("fleet"),
        "{all}"
    );
    let out = estuary(
        &["user", "remove", "fleet", "--data-dir", data_arg],
        dir,
        None,
    );
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(list(dir), "edgeadmin\n");
    let now = std::fs::read_to_string(&config).unwrap();
    assert!(
        now.contains("# Site: plant 7. Ticket OPS-1234.\n") && now.contains("# HTTP Basic users"),
        "{now}"
    );
    server.sighup();
    server.wait_for_log("configuration reloaded", 1);
    let r = enroll(
        &server,
        &csr,
        "/.well-known/est/simpleenroll",
        None,
        Some(&fleet),
    );
    assert_eq!(r.status, 401, "{}", r.text());
    server.stop();

    // A user an auth rule names cannot be removed (the file would not load).
    let now = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        now.replace(
            "[labels.edge-ca]\nprofile = \"edge-ca\"\nauth = []",
            "[labels.edge-ca]\nprofile = \"edge-ca\"\nauth = [\"basic:edgeadmin\"]",
        ),
    )
    .unwrap();
    assert!(std::fs::read_to_string(&config)
        .unwrap()
        .contains("basic:edgeadmin"));
    let before = std::fs::read_to_string(&config).unwrap();
    let out = estuary(
        &["user", "remove", "edgeadmin", "--data-dir", data_arg],
        dir,
        None,
    );
    let all = output_text(&out);
    assert!(
        !out.status.success() && all.contains("basic:edgeadmin"),
        "{all}"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
}

/// The options `estuary ARGS --help` lists, other than the data directory, config and help.
fn options_of(args: &[&str], dir: &Path) -> Vec<String> {
    let mut with_help = args.to_vec();
    with_help.push("--help");
    let out = estuary(&with_help, dir, None);
    assert!(out.status.success(), "{}", output_text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches(',').to_string())
        .filter(|w| !["--help", "--version", "--data-dir", "--config"].contains(&w.as_str()))
        .collect()
}

/// Items 6 and 9: the README's usage block names every operator command and every option of
/// `ca import` and `user add` (it lacked `--key-password-file` and `user remove`).
#[test]
fn readme_usage_names_the_user_commands_and_every_ca_import_option() {
    let tmp = tempdir();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md")).unwrap();
    for (command, line_start) in [
        (&["ca", "import"][..], "estuary ca import"),
        (&["user", "add"], "estuary user add NAME"),
        (&["user", "remove"], "estuary user remove NAME"),
        (&["user", "list"], "estuary user list"),
    ] {
        let line = readme
            .lines()
            .find(|l| l.starts_with(line_start))
            .unwrap_or_else(|| panic!("README has no usage line `{line_start} ...`"));
        for option in options_of(command, tmp.path()) {
            assert!(line.contains(&option), "README `{line}` lacks {option}");
        }
    }
}

/// Item 9: `ca import` with a wrong key password said "PKCS#5 encryption failed".
#[test]
fn ca_import_with_a_wrong_key_password_says_so() {
    let tmp = tempdir();
    let dir = tmp.path();
    sh(
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -aes-256-cbc -pass pass:right-password -out issuing-ca.key
         openssl req -x509 -new -key issuing-ca.key -passin pass:right-password -subj '/CN=Issuing CA' -days 30 \
           -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out issuing-ca.pem
         printf 'wrong-password\\n' > wrong.pass
         printf 'right-password\\n' > issuing-ca.pass",
        dir,
    );
    let import = |pass: &str| {
        estuary(
            &[
                "ca",
                "import",
                "--cert",
                "issuing-ca.pem",
                "--key",
                "issuing-ca.key",
                "--key-password-file",
                pass,
                "--data-dir",
                "data",
            ],
            dir,
            None,
        )
    };
    let out = import("wrong.pass");
    let all = output_text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("issuing-ca.key: wrong password for the encrypted key"),
        "{all}"
    );
    assert!(!all.contains("encryption failed"), "{all}");
    assert!(!dir.join("data").exists());
    let out = import("issuing-ca.pass");
    assert!(out.status.success(), "{}", output_text(&out));
}

/// Item 9: a `--san` on a later start re-issued the TLS certificate without a word and left
/// the config file without the name. Now the re-issue is logged with its SANs, and the name
/// is recorded in `server_sans` (comments kept).
#[test]
fn a_later_san_is_logged_and_recorded_in_the_config_file() {
    let tmp = tempdir();
    let data = tmp.path().join("data");
    let server = Server::start(&data, &[]);
    server.stop();
    let config = data.join("estuary.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("# kept: operator note\n{text}")).unwrap();
    let old_cert = std::fs::read(data.join("server-cert.pem")).unwrap();

    let server = Server::start(&data, &["--san", "est.example.com", "--san", "10.0.0.10"]);
    let log = server.log_text();
    assert!(
        log.contains("TLS server certificate re-issued")
            && log.contains("DNS:est.example.com")
            && log.contains("IP:10.0.0.10"),
        "{log}"
    );
    assert!(log.contains("--san recorded in server_sans"), "{log}");
    let san = x509(&data, "server-cert.pem", &["-ext", "subjectAltName"]);
    assert!(
        san.contains("DNS:est.example.com") && san.contains("10.0.0.10"),
        "{san}"
    );
    assert_ne!(
        std::fs::read(data.join("server-cert.pem")).unwrap(),
        old_cert
    );
    server.stop();
    let now = std::fs::read_to_string(&config).unwrap();
    assert!(now.starts_with("# kept: operator note\n"), "{now}");
    let file: toml::Value = toml::from_str(&now).unwrap();
    let sans: Vec<&str> = file["server_sans"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(sans, ["est.example.com", "10.0.0.10"]);

    // A later start without --san: the file asks for the same names; nothing is re-issued.
    let before = std::fs::read_to_string(server_log(&data)).unwrap().len();
    let server = Server::start(&data, &[]);
    let log = server.log_text()[before..].to_string();
    assert!(
        !log.contains("re-issued") && !log.contains("--san recorded"),
        "{log}"
    );
    server.stop();
}

fn server_log(data: &Path) -> std::path::PathBuf {
    data.with_extension("log")
}

/// Item 8: the systemd unit is a file in the repository, docs/production.md shows exactly it,
/// and `systemd-analyze verify` accepts it without a warning. verify checks that ExecStart's
/// program exists, so it runs on a copy that starts the binary under test. A missing
/// systemd-analyze fails the test (Debian package `systemd`; `.ci/run` installs it).
#[test]
fn the_shipped_systemd_unit_verifies_and_is_the_one_the_docs_show() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let unit = std::fs::read_to_string(format!("{root}/packaging/estuary.service")).unwrap();
    let guide = std::fs::read_to_string(format!("{root}/docs/production.md")).unwrap();
    assert!(
        guide.contains(&format!("```ini\n{unit}```\n")),
        "docs/production.md §9 must show packaging/estuary.service verbatim"
    );
    for line in [
        "User=estuary",
        "ExecStart=/usr/local/bin/estuary serve --data-dir /var/lib/estuary",
        "ReadWritePaths=/var/lib/estuary",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "LimitNOFILE=16384",
        "CapabilityBoundingSet=",
        "AmbientCapabilities=",
    ] {
        assert!(unit.lines().any(|l| l == line), "unit lacks {line}");
    }
    // The guide's sequence creates that user and gives it the data directory.
    for step in [
        "useradd --system --user-group --home-dir /var/lib/estuary",
        "install -d -o estuary -g estuary -m 0700 /var/lib/estuary",
        "runuser -u estuary -- estuary ca init",
        "install -m 0644 packaging/estuary.service /etc/systemd/system/estuary.service",
    ] {
        assert!(guide.contains(step), "docs/production.md §9 lacks `{step}`");
    }

    let tmp = tempdir();
    let check = |text: &str| {
        let path = tmp.path().join("estuary.service");
        std::fs::write(&path, text).unwrap();
        run_output(
            "systemd-analyze",
            &["verify", "--man=no", path.to_str().unwrap()],
            tmp.path(),
            None,
        )
    };
    let runnable = unit.replace("/usr/local/bin/estuary", BIN);
    assert_ne!(runnable, unit);
    let out = check(&runnable);
    let all = output_text(&out);
    assert!(out.status.success() && all.trim().is_empty(), "{all}");
    // As documented for port 443.
    let port_443 = runnable
        .replace(
            "\nCapabilityBoundingSet=\n",
            "\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n",
        )
        .replace(
            "\nAmbientCapabilities=\n",
            "\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n",
        );
    let out = check(&port_443);
    let all = output_text(&out);
    assert!(out.status.success() && all.trim().is_empty(), "{all}");
    // The check itself catches a mistake.
    let out = check(&runnable.replace("ProtectSystem=strict", "ProtectSystem=strickt"));
    assert!(!output_text(&out).trim().is_empty());
}

fn add_user(name: &str, data: &Path, dir: &Path) -> Output {
    estuary(
        &[
            "user",
            "add",
            name,
            "--password-stdin",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir,
        Some(b"long enough passphrase\n"),
    )
}

/// Review finding: `user add` as root chowned the config file by path after renaming it into
/// place (a symbolic link swapped in by the service user, who owns the directory, handed any
/// root-owned file to that user), and forced mode 0600 (a root:estsvc 0640 file became
/// unreadable by the service). Now owner and mode are set on the new file before the rename,
/// group read is kept, and a config file that is a symbolic link is refused.
#[test]
fn user_add_keeps_owner_and_group_read_and_refuses_a_symlinked_config() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let out = add_user("first", &data, dir);
    assert!(out.status.success(), "{}", output_text(&out));
    let config = data.join("estuary.toml");
    assert_eq!(std::fs::metadata(&config).unwrap().mode() & 0o7777, 0o600);

    // Hardened: group read for the service's group. Owned by another user when we are root.
    let root = std::fs::metadata("/proc/self").unwrap().uid() == 0;
    if root {
        std::os::unix::fs::chown(&config, Some(65534), Some(65534)).unwrap();
    }
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o640)).unwrap();
    let out = add_user("second", &data, dir);
    assert!(out.status.success(), "{}", output_text(&out));
    let meta = std::fs::metadata(&config).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o640);
    if root {
        assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    }
    // Others' bits are never kept.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = add_user("third", &data, dir);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(std::fs::metadata(&config).unwrap().mode() & 0o7777, 0o640);

    // A symbolic link in place of the config file: refused, the target untouched.
    let target = dir.join("elsewhere.toml");
    std::fs::rename(&config, &target).unwrap();
    std::os::unix::fs::symlink(&target, &config).unwrap();
    let before = std::fs::read(&target).unwrap();
    let before_meta = std::fs::metadata(&target).unwrap();
    let out = add_user("fourth", &data, dir);
    let all = output_text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(all.contains("symbolic link"), "{all}");
    assert!(std::fs::symlink_metadata(&config)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_eq!(std::fs::read(&target).unwrap(), before);
    let after_meta = std::fs::metadata(&target).unwrap();
    assert_eq!(
        (after_meta.uid(), after_meta.gid(), after_meta.mode()),
        (before_meta.uid(), before_meta.gid(), before_meta.mode())
    );
}

/// Review finding: with two auth rules naming users not added yet, each `user add` was
/// refused ("no user ... in [[users]]": the whole edited file is checked), so neither could
/// ever be added. A file that was invalid before the edit is now only warned about, unless
/// the edit causes the error.
#[test]
fn user_add_is_not_deadlocked_by_two_users_named_before_they_exist() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let out = add_user("first", &data, dir);
    assert!(out.status.success(), "{}", output_text(&out));
    let config = data.join("estuary.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let named = text.replace(
        "[labels.edge-ca]\nprofile = \"edge-ca\"\nauth = []",
        "[labels.edge-ca]\nprofile = \"edge-ca\"\nauth = [\"basic:edgeadmin\", \"basic:fleetadmin\"]",
    );
    assert_ne!(named, text);
    std::fs::write(&config, &named).unwrap();

    let out = add_user("edgeadmin", &data, dir);
    let all = output_text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("warning") && all.contains("fleetadmin"),
        "{all}"
    );
    let out = add_user("fleetadmin", &data, dir);
    let all = output_text(&out);
    assert!(out.status.success(), "{all}");
    assert!(!all.contains("warning"), "{all}");
    let out = estuary(
        &["config", "check", "--data-dir", data.to_str().unwrap()],
        dir,
        None,
    );
    assert!(out.status.success(), "{}", output_text(&out));

    // Removing a named user is still refused, even from a file already invalid otherwise.
    let now = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        now.replace(
            "auth = [\"basic:edgeadmin\", \"basic:fleetadmin\"]",
            "auth = [\"basic:edgeadmin\", \"basic:fleetadmin\", \"basic:later\"]",
        ),
    )
    .unwrap();
    let before = std::fs::read_to_string(&config).unwrap();
    let out = estuary(
        &[
            "user",
            "remove",
            "edgeadmin",
            "--data-dir",
            data.to_str().unwrap(),
        ],
        dir,
        None,
    );
    let all = output_text(&out);
    assert!(!out.status.success() && all.contains("edgeadmin"), "{all}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
}

/// Review finding: a key encrypted with PBES1 (`-v1 PBE-SHA1-3DES`) or PBES2 with 3DES
/// (`-v2 des3`) failed with a raw ASN.1 error instead of the scheme and the `openssl pkcs8`
/// command docs/ca.md promises; an encrypted key without a password file did not name
/// `--key-password-file`.
#[test]
fn ca_import_names_an_unsupported_key_encryption_and_the_missing_password_file() {
    let tmp = tempdir();
    let dir = tmp.path();
    sh(
        "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out plain.key
         openssl req -x509 -new -key plain.key -subj '/CN=Issuing CA' -days 30 \
           -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign -out ca.pem
         openssl pkcs8 -topk8 -v1 PBE-SHA1-3DES -passout pass:secret-password -in plain.key -out pbes1.key
         openssl pkcs8 -topk8 -v2 des3 -passout pass:secret-password -in plain.key -out des3.key
         openssl pkcs8 -topk8 -v2 aes-256-cbc -passout pass:secret-password -in plain.key -out aes.key
         printf 'secret-password\\n' > key.pass",
        dir,
    );
    let import = |key: &str, pass: Option<&str>| {
        let mut args = vec![
            "ca",
            "import",
            "--cert",
            "ca.pem",
            "--key",
            key,
            "--data-dir",
            "data",
        ];
        if let Some(pass) = pass {
            args.extend(["--key-password-file", pass]);
        }
        estuary(&args, dir, None)
    };
    for (key, scheme) in [("pbes1.key", "PBE-SHA1-3DES"), ("des3.key", "DES-EDE3-CBC")] {
        for pass in [Some("key.pass"), None] {
            let out = import(key, pass);
            let all = output_text(&out);
            assert!(!out.status.success(), "{all}");
            assert!(
                all.contains(scheme)
                    && all.contains("not supported")
                    && all.contains("openssl pkcs8 -topk8 -v2 aes-256-cbc"),
                "{all}"
            );
            assert!(
                !all.contains("ASN.1") && !all.contains("OBJECT IDENTIFIER"),
                "{all}"
            );
            assert!(!dir.join("data").exists());
        }
    }
    let out = import("aes.key", None);
    let all = output_text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("aes.key") && all.contains("--key-password-file"),
        "{all}"
    );
    assert!(!dir.join("data").exists());
    // The command the message gives makes a key that imports.
    sh(
        "openssl pkcs8 -topk8 -v2 aes-256-cbc -passin pass:secret-password -passout pass:secret-password \
           -in des3.key -out des3.key.p8",
        dir,
    );
    let out = import("des3.key.p8", Some("key.pass"));
    assert!(out.status.success(), "{}", output_text(&out));
}

/// Review finding: `config check FILE` took relative paths from FILE's directory while
/// `serve --config FILE` takes them from the data directory, so a file could pass the check
/// and fail at start. With `--data-dir` given, `config check FILE` now takes them from there.
#[test]
fn config_check_of_a_file_takes_relative_paths_from_an_explicit_data_dir() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let out = add_user("first", &data, dir);
    assert!(out.status.success(), "{}", output_text(&out));
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout mfg.key \
           -subj '/CN=Manufacturer CA' -days 30 -addext basicConstraints=critical,CA:TRUE \
           -addext keyUsage=critical,keyCertSign,cRLSign -out data/mfg.pem 2>/dev/null
         mkdir staging",
        dir,
    );
    let text = std::fs::read_to_string(data.join("estuary.toml")).unwrap();
    let staged = text.replace("bootstrap_ca = []", "bootstrap_ca = [\"mfg.pem\"]");
    assert_ne!(staged, text);
    std::fs::write(dir.join("staging/estuary.toml"), staged).unwrap();

    // On its own: relative to the file's directory, where there is no mfg.pem.
    let out = estuary(&["config", "check", "staging/estuary.toml"], dir, None);
    let all = output_text(&out);
    assert!(!out.status.success() && all.contains("mfg"), "{all}");
    // With --data-dir: relative to it, as `serve --config staging/estuary.toml --data-dir data`.
    let out = estuary(
        &[
            "config",
            "check",
            "staging/estuary.toml",
            "--data-dir",
            "data",
        ],
        dir,
        None,
    );
    let all = output_text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains("data/mfg.pem"), "{all}");
}

/// A `--dev` server's store in `data` holding one certificate (for the CSR returned), as a store
/// of the version before the CA-key binding: no key recorded, and then `also` (SQL) done.
fn a_store_of_one_certificate_with_no_ca_key_recorded(
    dir: &Path,
    data: &Path,
    also: &str,
) -> Vec<u8> {
    let server = Server::start(data, &["--dev"]);
    let csr = openssl_csr(dir, "device", P256, "/CN=device-1", &[]);
    enroll_with_estuser(&server, &csr);
    server.stop();
    let db = rusqlite::Connection::open(data.join("estuary.db")).unwrap();
    db.execute_batch(&format!("DELETE FROM meta WHERE key = 'ca_key_id'; {also}"))
        .unwrap();
    csr
}

/// A single server whose CA files were lost: its start creates a new CA, which the store (of
/// an earlier version: no CA key recorded yet) does not take, since its certificates and CRLs
/// are the old CA's; the refusal says what the start created and what to do. The new key's id
/// binds the store on purpose, and the old device then enrolls again with Basic.
#[test]
fn a_lost_ca_is_not_replaced_by_a_new_one_unless_asked() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    // As a store of the version before the binding: no key recorded.
    let csr = a_store_of_one_certificate_with_no_ca_key_recorded(dir, &data, "");
    for file in ["ca-cert.pem", "ca-key.pem"] {
        std::fs::remove_file(data.join(file)).unwrap();
    }
    let start = [
        "serve",
        "--dev",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "",
    ];
    let refused = estuary(&start, dir, None);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("certificates not signed by this key")
            && message.contains("This start created that CA"),
        "{message}"
    );
    let new_key = message
        .rsplit("ESTUARY_ACCEPT_NEW_CA_KEY=")
        .next()
        .unwrap()
        .trim()
        .to_string();
    let server = Server::start_with_env(
        &data,
        &["--dev"],
        &["--listen", "127.0.0.1:0"],
        &[("ESTUARY_ACCEPT_NEW_CA_KEY", std::ffi::OsStr::new(&new_key))],
    );
    enroll_with_estuser(&server, &csr);
    server.stop();
    // Bound now: the next start needs no variable, and one left set says it can go.
    drop(Server::start(&data, &["--dev"]));
    let server = Server::start_with_env(
        &data,
        &["--dev"],
        &["--listen", "127.0.0.1:0"],
        &[("ESTUARY_ACCEPT_NEW_CA_KEY", std::ffi::OsStr::new(&new_key))],
    );
    server.wait_for_log(
        "the store was already bound to this server's CA key; the variable can be removed",
        1,
    );
    server.stop();
}

/// A store of an earlier version (no CA key recorded) whose CRLs are not in it (schema 5 and
/// before kept none): its own CA still starts on it after the upgrade, since its newest
/// certificate carries that CA's signature, and `config check` says so beforehand; a CA that
/// did not sign it is refused by both.
#[test]
fn an_upgraded_store_without_crls_is_taken_by_the_ca_that_signed_its_certificates() {
    let tmp = tempdir();
    let dir = tmp.path();
    let data = dir.join("data");
    let csr = a_store_of_one_certificate_with_no_ca_key_recorded(dir, &data, "DELETE FROM crls;");
    let data_arg = data.to_str().unwrap();
    let checked = estuary_ok(&["config", "check", "--data-dir", data_arg], dir);
    assert!(
        checked.contains("records no CA key yet (a store of an earlier version) and holds this CA's certificates"),
        "{checked}"
    );

    // Another CA pointed at it: refused by the check and by the start.
    let other = dir.join("other");
    estuary_ok(&["ca", "init", "--data-dir", other.to_str().unwrap()], dir);
    let store = format!("sqlite:{}", data.join("estuary.db").display());
    let check_other = Command::new(BIN)
        .args(["config", "check", "--data-dir", other.to_str().unwrap()])
        .env("ESTUARY_DATABASE", &store)
        .current_dir(dir)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check_other.stdout);
    assert!(
        !check_other.status.success()
            && said.contains("✘ database: belongs to another CA key (no key recorded"),
        "{said}"
    );
    let refused = Command::new(BIN)
        .args(["serve", "--dev", "--data-dir", other.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--admin-listen", ""])
        .env("ESTUARY_DATABASE", &store)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("belongs to another CA key"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // Its own CA starts, records its key, and issues.
    let server = Server::start(&data, &["--dev"]);
    enroll_with_estuser(&server, &csr);
    server.stop();
    let checked = estuary_ok(&["config", "check", "--data-dir", data_arg], dir);
    assert!(
        checked.contains("✔ database: bound to this CA's key"),
        "{checked}"
    );
}
