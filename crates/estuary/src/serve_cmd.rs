//! `estuary serve`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use estuary_server::admin::{serve_plain, PlainRole};
use estuary_server::config::{ConfigFile, Settings, UserConfig};

use crate::DataArgs;

/// Tutorial (`--dev`) credentials.
const DEV_USER: &str = "estuser";
const DEV_PASSWORD: &str = "estpwd";
const DEV_LISTEN: [&str; 2] = ["0.0.0.0:8085", "[::]:8085"];

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    data: DataArgs,
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
}

/// The config file as it is on disk (or, on first start, as it will be written: the defaults
/// plus the set-up flags `--san` and `--ca-key`), and the effective config: that file with the
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
    Ok((file, effective, existed))
}

fn settings(args: &ServeArgs, must_exist: bool) -> anyhow::Result<(ConfigFile, Settings, bool)> {
    let (file, effective, existed) = load(args, must_exist)?;
    // The file as written must be valid on its own, too.
    file.resolve()
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
    if !existed {
        std::fs::create_dir_all(&args.data.data_dir)
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

    let prepared = Arc::new(
        estuary_server::prepare(settings, &args.data.data_dir).map_err(anyhow::Error::msg)?,
    );
    let ca = &prepared.shared.ca;
    let root = ca.chain_der().last().cloned().unwrap_or_default();
    let root_summary = estuary_client::files::summarize(&root).map_err(anyhow::Error::msg)?;
    tracing::info!(
        issuing_ca = %ca.certificate().tbs_certificate.subject,
        root = %root_summary.subject,
        root_sha256 = %root_summary.sha256,
        created = prepared.created_ca,
        "CA ready; devices trust the root (compare root_sha256 with `estuary client cacerts --tofu`)"
    );

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        prepared
            .shared
            .crl
            .refresh()
            .await
            .map_err(|e| anyhow::anyhow!("signing the first CRL: {e}"))?;
        tokio::spawn(prepared.shared.crl.clone().run());
        tokio::spawn(prepared.clone().run_maintenance());

        let listeners = estuary_server::serve::bind_listeners(&prepared.settings.listen)
            .map_err(anyhow::Error::msg)?;
        for l in &listeners {
            // A stable line on stdout that scripts and tests can wait for.
            println!(
                "estuary: listening on https://{}/.well-known/est",
                l.local_addr()?
            );
        }
        for (addr, role, what) in [
            (prepared.settings.admin_listen, PlainRole::Admin, "admin"),
            (prepared.settings.crl.listen, PlainRole::Crl, "crl"),
        ] {
            let Some(addr) = addr else { continue };
            let listener = match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                // The admin listener is an aid, not the service: a busy port must not stop EST.
                Err(e) if role == PlainRole::Admin => {
                    tracing::warn!(%addr, error = %e, "admin listener (/metrics, /healthz, /readyz) not started");
                    continue;
                }
                Err(e) => return Err(anyhow::anyhow!("cannot listen on {addr} ({what}): {e}")),
            };
            println!("estuary: {what} on http://{}", listener.local_addr()?);
            tokio::spawn(serve_plain(listener, prepared.service.clone(), role));
        }
        tokio::spawn(reload_on_sighup(args.clone(), prepared.clone()));
        println!("estuary: ready");

        let limits = prepared.settings.limits.clone();
        estuary_server::serve::serve(
            listeners,
            prepared.tls.clone(),
            prepared.service.clone(),
            limits,
            shutdown_signal(),
        )
        .await;
        // The last partial minute of refused anonymous requests.
        prepared.record_denial_summary().await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
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
                prepared.reload(&s)
            }
            Err(e) => {
                prepared.shared.metrics.reload(false);
                Err(format!("{e:#}"))
            }
        };
        match result {
            Ok(()) => tracing::info!("configuration reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "configuration NOT reloaded; the previous one stays in force")
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
