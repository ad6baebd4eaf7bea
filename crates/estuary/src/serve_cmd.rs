//! `estuary serve`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use estuary_server::admin::{plain_max_connections, serve_plain, PlainRole};
use estuary_server::config::{ConfigFile, Settings, UpstreamConfig, UserConfig};

use crate::StoreArgs;

/// Tutorial (`--dev`) credentials.
const DEV_USER: &str = "estuser";
const DEV_PASSWORD: &str = "estpwd";
const DEV_LISTEN: [&str; 2] = ["0.0.0.0:8085", "[::]:8085"];

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    data: StoreArgs,
    /// TLS listen address (repeatable), e.g. 0.0.0.0:8085, [::]:8085, 127.0.0.1:0.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Vec<String>,
    /// Lifetime of issued certificates: 30s, 60m, 12h, 1d, 90d.
    #[arg(long, value_name = "DURATION")]
    validity: Option<String>,
    /// Test mode with the Azure IoT Edge tutorial's settings: port 8085, Basic user
    /// estuser/estpwd, certificates valid 1 day, CA:TRUE requests get the edge-ca profile.
    #[arg(long)]
    dev: bool,
    /// Extra DNS name or IP for the TLS server certificate (repeatable).
    #[arg(long, value_name = "NAME|IP")]
    san: Vec<String>,
    /// CA key type when the CA is created: p256, p384, rsa2048, rsa3072, rsa4096, ed25519.
    #[arg(long, value_name = "TYPE")]
    ca_key: Option<String>,
    /// Plain-HTTP admin listener for /metrics, /healthz, /readyz ("" = off).
    #[arg(long, value_name = "ADDR:PORT")]
    admin_listen: Option<String>,
    /// Plain-HTTP listener for /crl ("" = off).
    #[arg(long, value_name = "ADDR:PORT")]
    crl_listen: Option<String>,
    /// RA mode: forward enrollments to this parent EST server
    /// (https://HOST[:PORT]/.well-known/est); overrides or creates [upstream].
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Trust anchor (PEM) for the parent's TLS certificate.
    #[arg(long, value_name = "FILE")]
    upstream_ca: Option<std::path::PathBuf>,
    /// Basic credential at the parent, split at the first ':' (prefer ESTUARY_UPSTREAM_USER
    /// to keep the password off the command line).
    #[arg(
        long,
        value_name = "USER:PASSWORD",
        env = "ESTUARY_UPSTREAM_USER",
        hide_env_values = true
    )]
    upstream_user: Option<String>,
    /// Client certificate (PEM) for the parent (with --upstream-key).
    #[arg(long, value_name = "FILE")]
    upstream_cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --upstream-cert.
    #[arg(long, value_name = "FILE")]
    upstream_key: Option<std::path::PathBuf>,
}

/// Applies `--upstream*` (and `ESTUARY_UPSTREAM_USER`) to `config` for this run: the flags
/// win over the file's `[upstream]`, and `--upstream` creates the table when the file has none.
fn apply_upstream_flags(args: &ServeArgs, config: &mut ConfigFile) -> anyhow::Result<()> {
    let any_other = args.upstream_ca.is_some()
        || args.upstream_user.is_some()
        || args.upstream_cert.is_some()
        || args.upstream_key.is_some();
    if args.upstream_user.is_some() && (args.upstream_cert.is_some() || args.upstream_key.is_some())
    {
        bail!(
            "--upstream-user (or ESTUARY_UPSTREAM_USER) and --upstream-cert/--upstream-key are two \
             credentials for the parent; give one"
        );
    }
    match (&args.upstream_cert, &args.upstream_key) {
        (Some(_), None) => bail!("--upstream-cert needs --upstream-key"),
        (None, Some(_)) => bail!("--upstream-key needs --upstream-cert"),
        _ => {}
    }
    if let Some(url) = &args.upstream {
        match &mut config.upstream {
            Some(u) => u.url = url.clone(),
            None => config.upstream = Some(UpstreamConfig::new(url)),
        }
    }
    let Some(upstream) = &mut config.upstream else {
        if any_other {
            bail!(
                "--upstream-ca, --upstream-user (ESTUARY_UPSTREAM_USER), --upstream-cert and \
                 --upstream-key need --upstream URL or an [upstream] table in the config file"
            );
        }
        return Ok(());
    };
    // Paths on the command line are relative to where the command runs (in the file, to the
    // data directory).
    let absolute = |p: &std::path::Path| {
        std::path::absolute(p).with_context(|| format!("{}: not a usable path", p.display()))
    };
    if let Some(ca) = &args.upstream_ca {
        upstream.ca = Some(absolute(ca)?);
    }
    if let Some(user_password) = &args.upstream_user {
        let Some((user, password)) = user_password.split_once(':') else {
            bail!("--upstream-user (or ESTUARY_UPSTREAM_USER): expected USER:PASSWORD");
        };
        upstream.user = Some(user.to_string());
        upstream.password = Some(password.to_string());
        upstream.cert = None;
        upstream.key = None;
    }
    if let (Some(cert), Some(key)) = (&args.upstream_cert, &args.upstream_key) {
        upstream.cert = Some(absolute(cert)?);
        upstream.key = Some(absolute(key)?);
        upstream.user = None;
        upstream.password = None;
    }
    Ok(())
}

/// The config file as it is on disk (or, on first start, as it will be written: the defaults
/// plus the set-up flags `--san`, `--ca-key` and `--upstream*`; a later `--san` is recorded too, see
/// [`record_sans`]), and the effective config: that file with the
/// run-time flags (`--listen`, `--validity`, `--admin-listen`, `--crl-listen`) and `--dev`
/// applied. `--dev` is never written to the file: a later start without it is not in test mode.
fn load(args: &ServeArgs, must_exist: bool) -> anyhow::Result<(ConfigFile, ConfigFile, bool)> {
    let config_path = args.data.config_path();
    let existed = config_path.exists();
    if !existed && (must_exist || args.data.config.is_some()) {
        bail!("config file {} does not exist", config_path.display());
    }
    let mut file = if existed {
        ConfigFile::read(&config_path).map_err(anyhow::Error::msg)?
    } else {
        ConfigFile::new_default(false)
    };
    if let Some(k) = &args.ca_key {
        file.ca_key = k.clone();
    }
    for san in &args.san {
        if !file.server_sans.contains(san) {
            file.server_sans.push(san.clone());
        }
    }
    if !existed {
        // A registration authority's first start records its upstream (like --san), so that a
        // restart without the flags is the same RA, not a new CA. The file is mode 0600.
        apply_upstream_flags(args, &mut file)?;
    }
    let mut effective = file.clone();
    if args.dev {
        effective.dev = true;
        effective.default.profile = "auto".into();
        if args.validity.is_none() {
            effective.validity = "1d".into();
        }
        if args.listen.is_empty() {
            effective.listen = DEV_LISTEN.iter().map(|s| s.to_string()).collect();
        }
        // The tutorial's Edge CA works from any label: open edge-ca to every client.
        if let Some(edge_ca) = effective.labels.get_mut("edge-ca") {
            edge_ca.auth = None;
        }
        if !effective.users.iter().any(|u| u.name == DEV_USER) {
            effective.users.push(UserConfig {
                name: DEV_USER.into(),
                password_hash: estuary_auth::hash_password(DEV_PASSWORD)
                    .map_err(anyhow::Error::msg)?,
            });
        }
    }
    if let Some(v) = &args.validity {
        effective.validity = v.clone();
    }
    if !args.listen.is_empty() {
        effective.listen = args.listen.clone();
    }
    if let Some(a) = &args.admin_listen {
        effective.admin_listen = a.clone();
    }
    if let Some(a) = &args.crl_listen {
        effective.crl.listen = a.clone();
    }
    // Never written to the file: the URL may hold a password.
    if let Some(url) = &args.data.database {
        effective.database.url = url.clone();
    }
    apply_upstream_flags(args, &mut effective)?;
    Ok((file, effective, existed))
}

fn settings(args: &ServeArgs, must_exist: bool) -> anyhow::Result<(ConfigFile, Settings, bool)> {
    let (file, effective, existed) = load(args, must_exist)?;
    // The file as written must be valid on its own, too (as a --dev file when run with --dev:
    // a test config may leave a CA label open, which only --dev allows).
    let mut as_written = file.clone();
    as_written.dev |= args.dev;
    as_written
        .resolve()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.data.config_path().display()))?;
    let settings = effective
        .resolve()
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.data.config_path().display()))?;
    Ok((file, settings, existed))
}

pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let (file, settings, existed) = settings(&args, false)?;
    let config_path = args.data.config_path();
    if existed
        && args.ca_key.is_some()
        && args
            .data
            .data_dir
            .join(estuary_ca::bootstrap::CA_KEY_FILE)
            .exists()
    {
        tracing::warn!("--ca-key is ignored: the CA already exists");
    }
    if existed {
        tighten_config_mode(&config_path);
    }
    if existed && !args.san.is_empty() {
        record_sans(&config_path, &args.san);
    }
    if !existed {
        estuary_ca::bootstrap::create_private_dir(&args.data.data_dir)
            .with_context(|| format!("creating {}", args.data.data_dir.display()))?;
        estuary_ca::bootstrap::write_atomic(
            &config_path,
            file.to_commented_toml().as_bytes(),
            0o600,
        )?;
        tracing::info!(path = %config_path.display(), "wrote config file");
    }
    if settings.dev {
        tracing::warn!(
            "DEV MODE: test settings from the Azure IoT Edge EST tutorial (Basic user {DEV_USER} with the \
             tutorial's password, certificates valid {}). Do not use in production.",
            estuary_server::config::describe_validity(settings.validity)
        );
    }

    let plain_listeners = [settings.admin_listen, settings.crl.listen]
        .iter()
        .flatten()
        .count();
    let est_max_connections = fit_open_files(
        settings.limits.max_connections,
        plain_listeners * plain_max_connections(&settings.limits),
    )?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let prepared = Arc::new(if settings.upstream.is_some() {
        // A registration authority: its certificates come from the upstream (over the network).
        runtime.block_on(estuary_server::prepare_registration_authority(
            settings,
            &args.data.data_dir,
        ))?
    } else {
        runtime.block_on(estuary_server::prepare(settings, &args.data.data_dir))?
    });
    let chain = prepared.shared.authority.chain_der();
    let root = chain.last().cloned().unwrap_or_default();
    let root_summary = estuary_client::files::summarize(&root).map_err(anyhow::Error::msg)?;
    let issuing = chain.first().cloned().unwrap_or_default();
    let issuing_summary = estuary_client::files::summarize(&issuing).map_err(anyhow::Error::msg)?;
    if prepared.ca.is_some() {
        tracing::info!(
            issuing_ca = %issuing_summary.subject,
            root = %root_summary.subject,
            root_sha256 = %root_summary.sha256,
            created = prepared.created_ca,
            "CA ready; devices trust the root (compare root_sha256 with `estuary client cacerts --tofu`)"
        );
    } else {
        tracing::info!(
            issuing_ca = %issuing_summary.subject,
            root = %root_summary.subject,
            root_sha256 = %root_summary.sha256,
            authority = %prepared.shared.authority.describe(),
            "registration authority ready; devices trust the upstream's root (ca-cert.pem)"
        );
    }

    runtime.block_on(async move {
        prepared
            .shared
            .authority
            .start()
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        tokio::spawn(prepared.shared.authority.clone().run());
        tokio::spawn(prepared.clone().run_maintenance());

        let listeners = estuary_server::serve::bind_listeners(&prepared.settings.listen)?;
        // Every listener is bound before any is announced: a start that fails (a busy admin
        // port) prints no "listening" line that a script could take for a running server.
        let mut plain_listeners = Vec::new();
        for (addr, role, what) in [
            (prepared.settings.admin_listen, PlainRole::Admin, "admin"),
            (prepared.settings.crl.listen, PlainRole::Crl, "crl"),
        ] {
            let Some(addr) = addr else { continue };
            // The operator asked for this listener (admin_listen is on by default, and monitoring
            // and the service manager rely on /healthz): a busy port is a start error, like a
            // busy EST port, never a server that reports ready without it.
            let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                let (key, flag, serves) = match role {
                    PlainRole::Admin => (
                        "admin_listen",
                        "--admin-listen",
                        "/metrics, /healthz, /readyz",
                    ),
                    PlainRole::Crl => ("[crl] listen", "--crl-listen", "/crl"),
                };
                anyhow::anyhow!(
                    "cannot listen on {addr} for the {what} listener ({key}: {serves}): {e}; \
                     free the port, choose another ({key} = \"ADDR:PORT\" in the config, or \
                     {flag} ADDR:PORT), or turn the listener off ({key} = \"\", or {flag} \"\")"
                )
            })?;
            plain_listeners.push((listener, role, what));
        }
        for l in &listeners {
            // A stable line on stdout that scripts and tests can wait for.
            println!(
                "estuary: listening on https://{}/.well-known/est",
                l.local_addr()?
            );
        }
        // One stop signal for every listener: SIGTERM stops accepting everywhere, then requests
        // in flight finish.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        let mut plain_tasks = Vec::new();
        for (listener, role, what) in plain_listeners {
            println!("estuary: {what} on http://{}", listener.local_addr()?);
            let (service, limits) = (prepared.service.clone(), prepared.settings.limits.clone());
            let stop = stopped(stop_rx.clone());
            plain_tasks.push(tokio::spawn(async move {
                serve_plain(listener, service, role, &limits, stop).await
            }));
        }
        tokio::spawn(reload_on_sighup(args.clone(), prepared.clone()));
        println!("estuary: ready");

        let mut limits = prepared.settings.limits.clone();
        limits.max_connections = est_max_connections;
        estuary_server::serve::serve(
            listeners,
            prepared.tls.clone(),
            prepared.service.clone(),
            limits,
            async move {
                shutdown_signal().await;
                let _ = stop_tx.send(true);
            },
        )
        .await;
        for task in plain_tasks {
            let _ = task.await;
        }
        // The last partial minute of refused anonymous requests.
        prepared.record_denial_summary().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The config file holds password hashes: readable by its owner and, if so set up, its group
/// (root:estuary 0640), never by others. Changed through an open handle that is checked to be
/// the regular file found at the path (a symbolic link is left alone), never by path.
fn tighten_config_mode(config_path: &std::path::Path) {
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    let Ok(meta) = std::fs::symlink_metadata(config_path) else {
        return;
    };
    let mode = meta.mode() & 0o7777;
    if !meta.is_file() || mode & 0o037 == 0 {
        return;
    }
    let wanted = (mode & 0o040) | 0o600;
    let result = std::fs::File::open(config_path).and_then(|file| {
        let opened = file.metadata()?;
        if (opened.dev(), opened.ino()) != (meta.dev(), meta.ino()) {
            return Err(std::io::Error::other("the file was replaced meanwhile"));
        }
        file.set_permissions(std::fs::Permissions::from_mode(wanted))
    });
    match result {
        Ok(()) => {
            tracing::warn!(file = %config_path.display(), old_mode = format!("{mode:o}"), new_mode = format!("{wanted:o}"), "the config file was readable or writable by others (it holds password hashes, and an RA's upstream password): tightened")
        }
        Err(e) => {
            tracing::warn!(file = %config_path.display(), mode = format!("{mode:o}"), error = %e, "the config file is readable or writable by others (it holds password hashes, and an RA's upstream password); make it 0600 (or 0640 for a group the service runs as)")
        }
    }
}

/// `--san` names the config file lacks go into its `server_sans` (edited in place, comments
/// kept): the TLS certificate is re-issued with them and keeps them, so the file says what the
/// certificate holds, and a later start without `--san` (a systemd unit) asks for the same.
/// A file that cannot be written (read-only `--config`) only costs a warning.
fn record_sans(config_path: &std::path::Path, sans: &[String]) {
    let result = crate::config_edit::ConfigEdit::open(config_path).and_then(|mut edit| {
        let added = edit.add_server_sans(sans)?;
        if !added.is_empty() {
            edit.save()?;
        }
        Ok(added)
    });
    match result {
        Ok(added) if added.is_empty() => {}
        Ok(added) => tracing::info!(
            path = %config_path.display(),
            added = %added.join(", "),
            "--san recorded in server_sans of the config file"
        ),
        Err(e) => tracing::warn!(
            path = %config_path.display(),
            error = %crate::error_chain(&e),
            "--san could not be recorded in server_sans of the config file; add it there by hand, \
             or later starts without --san will not ask for it"
        ),
    }
}

/// File descriptors kept for everything but client connections: the store's SQLite files (a
/// database and a WAL file per connection, one connection per concurrent read at a burst),
/// the log, the listening sockets, the runtime's own descriptors, files read on reload.
const FD_MARGIN: u64 = 256;
/// Below this many EST connections the server is not worth starting.
const MIN_EST_CONNECTIONS: u64 = 64;

/// Raises the soft RLIMIT_NOFILE to the hard limit, then checks that `max_connections` EST
/// connections, `plain_connections` on the plain-HTTP listeners and [`FD_MARGIN`] fit in it.
/// Returns the EST connection cap to use: `max_connections`, or (with a clear warning) what
/// fits, so that a flood of connections is turned away at the cap instead of failing `accept`
/// and the store with "Too many open files".
fn fit_open_files(max_connections: usize, plain_connections: usize) -> anyhow::Result<usize> {
    let limit = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read or raise the open-file limit (RLIMIT_NOFILE)");
            return Ok(max_connections);
        }
    };
    let cap = est_connections_that_fit(limit, max_connections, plain_connections)
        .map_err(anyhow::Error::msg)?;
    if cap < max_connections {
        tracing::warn!(
            open_file_limit = limit,
            max_connections,
            serving_at_most = cap,
            "limits.max_connections does not fit in the open-file limit (RLIMIT_NOFILE) with the \
             plain-HTTP listeners ({plain_connections}) and {FD_MARGIN} for the store and logs; \
             EST connections are capped at {cap}. Raise the limit (systemd: LimitNOFILE=) or lower \
             limits.max_connections"
        );
    } else {
        tracing::debug!(
            open_file_limit = limit,
            "open-file limit fits the connection caps"
        );
    }
    Ok(cap)
}

/// The EST connection cap that fits in `limit` open files (see [`fit_open_files`]).
fn est_connections_that_fit(
    limit: u64,
    max_connections: usize,
    plain_connections: usize,
) -> Result<usize, String> {
    let available = limit.saturating_sub(plain_connections as u64 + FD_MARGIN);
    if available < MIN_EST_CONNECTIONS.min(max_connections as u64) {
        return Err(format!(
            "the open-file limit (RLIMIT_NOFILE) is {limit}: too low for {MIN_EST_CONNECTIONS} EST \
             connections, the plain-HTTP listeners ({plain_connections}) and {FD_MARGIN} for the \
             store and logs; raise it (systemd: LimitNOFILE=, shell: ulimit -n)"
        ));
    }
    Ok(max_connections.min(usize::try_from(available).unwrap_or(usize::MAX)))
}

/// SIGHUP: re-read the config file and swap in the new users, labels, profiles, rate limits
/// and bootstrap CAs; connections stay up. A bad file is reported and the old settings stay.
async fn reload_on_sighup(args: ServeArgs, prepared: Arc<estuary_server::PreparedServer>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!("cannot listen for SIGHUP; reloading needs a restart");
        return;
    };
    while hup.recv().await.is_some() {
        // On reload the file must exist: a missing file must not silently mean "defaults".
        let result = match settings(&args, true) {
            Ok((_, s, _)) => {
                warn_restart_only_changes(&prepared.settings, &s);
                // Reading files and fetching CRLs blocks (bounded by their own deadlines):
                // off the async threads, so requests keep being served meanwhile.
                let prepared = prepared.clone();
                match tokio::task::spawn_blocking(move || prepared.reload(&s)).await {
                    Ok(reloaded) => reloaded.map_err(anyhow::Error::from),
                    Err(e) => Err(anyhow::anyhow!("reload failed: {e}")),
                }
            }
            Err(e) => {
                prepared.shared.metrics.reload(false);
                Err(e)
            }
        };
        match result {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(e) => {
                tracing::error!(error = %crate::error_chain(&e), "configuration NOT reloaded; the previous one stays in force")
            }
        }
    }
}

/// Settings that a reload cannot apply: say so instead of ignoring them silently.
fn warn_restart_only_changes(running: &Settings, new: &Settings) {
    let l = (&running.limits, &new.limits);
    let changed = [
        ("listen", running.listen != new.listen),
        ("admin_listen", running.admin_listen != new.admin_listen),
        ("crl.listen", running.crl.listen != new.crl.listen),
        ("crl.validity", running.crl.validity != new.crl.validity),
        ("server_sans", running.server_sans != new.server_sans),
        (
            "limits.max_connections",
            l.0.max_connections != l.1.max_connections,
        ),
        (
            "limits.handshake_timeout",
            l.0.handshake_timeout != l.1.handshake_timeout,
        ),
        (
            "limits.header_timeout",
            l.0.header_timeout != l.1.header_timeout,
        ),
        (
            "limits.max_connection_age",
            l.0.max_connection_age != l.1.max_connection_age,
        ),
    ];
    for (key, differs) in changed {
        if differs {
            tracing::warn!("{key} changed: it takes effect at the next restart, not on reload");
        }
    }
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C received"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_flags(flags: &[&str], file: Option<UpstreamConfig>) -> anyhow::Result<ConfigFile> {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let args = <Cli as clap::Parser>::try_parse_from(
            std::iter::once("serve").chain(flags.iter().copied()),
        )?;
        let mut config = ConfigFile::new_default(false);
        config.upstream = file;
        apply_upstream_flags(&args.serve, &mut config)?;
        Ok(config)
    }

    #[test]
    fn upstream_flags_create_or_override_the_table() -> anyhow::Result<()> {
        let url = "https://parent.example/.well-known/est";
        // Nothing given: nothing changes.
        assert!(with_flags(&[], None)?.upstream.is_none());
        // --upstream creates the table; USER:PASSWORD splits at the first ':'.
        let c = with_flags(
            &[
                "--upstream",
                url,
                "--upstream-user",
                "ra:pa:ss",
                "--upstream-ca",
                "p.pem",
            ],
            None,
        )?;
        let u = c
            .upstream
            .clone()
            .unwrap_or_else(|| UpstreamConfig::new("none"));
        assert_eq!(u.url, url);
        assert_eq!(u.user.as_deref(), Some("ra"));
        assert_eq!(u.password.as_deref(), Some("pa:ss"));
        // Relative to where the command runs.
        assert_eq!(u.ca, Some(std::path::absolute("p.pem")?));
        assert!(c.resolve().is_ok());
        // Flags win over the file: a certificate replaces the file's Basic credential.
        let mut file = UpstreamConfig::new("https://old.example/.well-known/est");
        file.ca = Some("root.pem".into());
        file.user = Some("u".into());
        file.password = Some("p".into());
        let c = with_flags(
            &["--upstream-cert", "c.pem", "--upstream-key", "k.pem"],
            Some(file),
        )?;
        let u = c
            .upstream
            .clone()
            .unwrap_or_else(|| UpstreamConfig::new("none"));
        assert_eq!(u.url, "https://old.example/.well-known/est");
        assert_eq!((u.user, u.password), (None, None));
        assert_eq!(u.cert, Some(std::path::absolute("c.pem")?));
        assert!(c.resolve().is_ok());
        // Clear errors.
        let err = |flags: &[&str]| match with_flags(flags, None) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        assert_eq!(
            err(&["--upstream", url, "--upstream-cert", "c.pem"]),
            "--upstream-cert needs --upstream-key"
        );
        assert_eq!(
            err(&["--upstream", url, "--upstream-key", "k.pem"]),
            "--upstream-key needs --upstream-cert"
        );
        assert!(err(&[
            "--upstream",
            url,
            "--upstream-user",
            "a:b",
            "--upstream-cert",
            "c.pem",
            "--upstream-key",
            "k.pem"
        ])
        .starts_with("--upstream-user (or ESTUARY_UPSTREAM_USER) and --upstream-cert/--upstream-key are two credentials"));
        assert_eq!(
            err(&["--upstream", url, "--upstream-user", "nocolon"]),
            "--upstream-user (or ESTUARY_UPSTREAM_USER): expected USER:PASSWORD"
        );
        assert!(err(&["--upstream-ca", "p.pem"]).contains("need --upstream URL"));
        Ok(())
    }

    #[test]
    fn connection_caps_must_fit_in_the_open_file_limit() {
        // Plenty: the configured cap stands.
        assert_eq!(est_connections_that_fit(1 << 20, 10_000, 512), Ok(10_000));
        // Exactly enough.
        assert_eq!(
            est_connections_that_fit(10_000 + 512 + FD_MARGIN, 10_000, 512),
            Ok(10_000)
        );
        // Too little for the configured cap: what fits.
        assert_eq!(
            est_connections_that_fit(4096, 10_000, 512),
            Ok(4096 - 512 - 256)
        );
        // Too little to be worth starting.
        let err = est_connections_that_fit(700, 10_000, 512).unwrap_err();
        assert!(err.contains("LimitNOFILE") && err.contains("700"), "{err}");
        // A small configured cap needs only itself.
        assert_eq!(est_connections_that_fit(300, 10, 0), Ok(10));
    }
}
