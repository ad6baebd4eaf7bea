//! `estuary config check`: validate a config file and what `serve` would load beside it (the
//! CA, bootstrap CAs and CRLs, the store and whose CA it is), and show what each label allows.

use std::path::PathBuf;
use std::process::ExitCode;

use estuary_server::config::ConfigFile;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Check a config file and what the server would load beside it (the CA, bootstrap CAs and
    /// CRLs, the store and whose CA it is); print what each label allows. Non-zero exit on
    /// errors.
    Check {
        /// The file (default: DATA_DIR/estuary.toml). Relative paths in it are taken from
        /// --data-dir when that is given (as `serve --config FILE --data-dir DIR` does), else
        /// from the file's directory.
        file: Option<PathBuf>,
        #[command(flatten)]
        data: crate::StoreArgs,
    },
}

/// `data_dir_given`: `--data-dir` (or `ESTUARY_DATA_DIR`) was given, not defaulted.
pub fn run(cmd: ConfigCommand, data_dir_given: bool) -> anyhow::Result<ExitCode> {
    let ConfigCommand::Check { file, data } = cmd;
    // Relative paths in the file (bootstrap_ca, bootstrap_crl) are relative to the data
    // directory, as the server takes them: --data-dir when given or when no FILE is; a FILE
    // checked on its own (a copy being prepared) takes them from its own directory.
    let base = match &file {
        Some(f) if !data_dir_given => f.parent().map(|p| p.to_path_buf()).unwrap_or_default(),
        _ => data.data_dir.clone(),
    };
    let given = file.is_some() || data.config.is_some();
    let path = file.unwrap_or_else(|| data.config_path());
    // No config file yet in the data directory: `serve` starts with the defaults (and writes
    // them), so they are what is checked.
    let first_start = !given && !path.exists();
    if first_start {
        println!(
            "✔ {} is not there yet: the first `estuary serve` writes the defaults, checked below",
            path.display()
        );
    }
    let read = if first_start {
        Ok(ConfigFile::new_default(false))
    } else {
        ConfigFile::read(&path)
    };
    let settings = match read.and_then(|f| f.resolve().map_err(|e| e.in_file(&path))) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("✘ {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let mut ok = true;
    let mut anchors = Vec::new();
    for (name, p) in &settings.bootstrap_ca {
        let full = if p.is_absolute() {
            p.clone()
        } else {
            base.join(p)
        };
        match estuary_ca::bootstrap::read_pem_certificates(&full) {
            Ok(c) => {
                println!(
                    "✔ bootstrap CA {name}: {} ({} certificate(s))",
                    full.display(),
                    c.len()
                );
                anchors.extend(c.into_iter().map(|der| (name.clone(), der)));
            }
            Err(e) => {
                ok = false;
                println!("✘ bootstrap CA {name}: {e}");
            }
        }
    }
    // The CRLs as the server loads them: read (or fetched), issued and signed by their CA.
    for (name, source) in &settings.bootstrap_crl {
        let Some((_, ca_der)) = anchors.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let feed = estuary_server::bootstrap_crl::CrlFeed {
            name: name.clone(),
            source: source.clone(),
            ca_der: ca_der.clone(),
        };
        match feed.load(&base) {
            Ok(crl) => {
                let now = std::time::SystemTime::now();
                let next = crl.next_update.map(estuary_server::bootstrap_crl::rfc3339);
                if crl.next_update.is_some_and(|t| t <= now) {
                    ok = false;
                    println!(
                        "✘ bootstrap CRL {name}: {source} is past its nextUpdate ({}): the server would refuse every certificate of {name}",
                        next.unwrap_or_default()
                    );
                } else {
                    println!(
                        "✔ bootstrap CRL {name}: {source} ({} revoked, next update {})",
                        crl.entries,
                        next.unwrap_or_else(|| "none".into())
                    );
                }
            }
            Err(e) => {
                ok = false;
                let consequence = match source {
                    estuary_server::config::CrlSource::File(_) => "the server would not start",
                    estuary_server::config::CrlSource::Url(_) => {
                        "the server would start but refuse this CA's certificates until it can fetch the CRL"
                    }
                };
                println!("✘ {e} ({consequence})");
            }
        }
    }
    // The CA, as `serve` loads it: its key in a PKCS#11 token (reachable, PIN accepted) or
    // in ca-key.pem, and the key of ca-cert.pem. A registration authority has none.
    let ca = if settings.upstream.is_some() {
        CaHere::None
    } else {
        check_ca(&data.data_dir, settings.ca_key_uri.as_ref(), &mut ok)
    };
    // The store `serve` would use (--database/ESTUARY_DATABASE, else `[database] url`, else
    // DATA_DIR/estuary.db): reachable, with credentials that work, a schema this version can
    // use, and bound to this CA's key.
    let database = match &data.database {
        Some(text) => match text.parse::<estuary_store::DatabaseUrl>() {
            Ok(url) => Some(url),
            Err(e) => {
                ok = false;
                println!("✘ --database/ESTUARY_DATABASE: {e}");
                None
            }
        },
        None => Some(settings.database.clone().unwrap_or_else(|| {
            estuary_store::DatabaseUrl::Sqlite(data.data_dir.join(estuary_server::DATABASE_FILE))
        })),
    };
    if let Some(url) = &database {
        ok &= check_database(url, &ca, &data.data_dir)?;
    }
    if !first_start {
        println!("✔ {} parses", path.display());
    }
    println!(
        "listen: {}",
        settings
            .listen
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "default validity: {}",
        estuary_server::config::describe_validity(settings.validity)
    );
    println!(
        "users: {}",
        settings
            .users
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for line in settings.describe_labels() {
        println!("{line}");
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `future` run to its end on `runtime`, or `Err` after [`DATABASE_CHECK_TIMEOUT`] (the
/// timer is made inside the runtime, which it needs).
fn block_on_bounded<T>(
    runtime: &tokio::runtime::Runtime,
    future: impl std::future::Future<Output = T>,
) -> Result<T, tokio::time::error::Elapsed> {
    runtime.block_on(async { tokio::time::timeout(DATABASE_CHECK_TIMEOUT, future).await })
}

/// How long the database may take to answer (a server that accepts the connection and says
/// nothing would otherwise hold the check for ever).
const DATABASE_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(20);

/// The CA `config check` found in the data directory.
enum CaHere {
    /// It loads; its public key (SubjectPublicKeyInfo DER).
    Loaded(Vec<u8>),
    /// None yet: the first `serve` creates one.
    NotYet,
    /// None to check: it does not load (said already), or a registration authority has none.
    None,
}

/// Checks the CA `serve` would load from `data_dir` (or the token `uri` names) and prints what
/// it found (`ok` cleared when it does not load).
fn check_ca(
    data_dir: &std::path::Path,
    uri: Option<&estuary_ca::pkcs11::Pkcs11Uri>,
    ok: &mut bool,
) -> CaHere {
    use estuary_ca::bootstrap::{CA_CERT_FILE, CA_KEY_FILE};
    let cert_path = data_dir.join(CA_CERT_FILE);
    let key_path = data_dir.join(CA_KEY_FILE);
    let loaded = match uri {
        Some(uri) => estuary_ca::bootstrap::load_ca_from_token(data_dir, uri).inspect(|ca| {
            println!(
                "✔ CA key in the PKCS#11 token ({}): reachable, and the key of {} ({})",
                uri.describe(),
                cert_path.display(),
                ca.certificate().tbs_certificate.subject
            );
        }),
        None if !cert_path.exists() && !key_path.exists() => {
            println!(
                "✔ CA: none in {} yet (the first `estuary serve` creates one)",
                data_dir.display()
            );
            return CaHere::NotYet;
        }
        None => estuary_ca::bootstrap::load_ca(&key_path, &cert_path).inspect(|ca| {
            println!(
                "✔ CA: {} and the key of {} ({})",
                key_path.display(),
                cert_path.display(),
                ca.certificate().tbs_certificate.subject
            );
        }),
    };
    match loaded {
        Ok(ca) => CaHere::Loaded(ca.signer().public_key_der().to_vec()),
        Err(e) => {
            *ok = false;
            let what = if uri.is_some() { "ca_key_uri" } else { "CA" };
            println!("✘ {what}: {e} (the server would not start)");
            CaHere::None
        }
    }
}

/// Checks the store at `url` as `serve` would open it, and whether it belongs to the CA key
/// found here (`estuary_server::store_owner`, the function `serve` decides with). Prints what
/// it found; false when `serve` would refuse.
fn check_database(
    url: &estuary_store::DatabaseUrl,
    ca: &CaHere,
    data_dir: &std::path::Path,
) -> anyhow::Result<bool> {
    use estuary_server::StoreOwner;
    use estuary_store::StoreError;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let bounded = |what: &str| {
        println!(
            "✘ database {url}: no answer to {what} within {} s (the server would not start)",
            DATABASE_CHECK_TIMEOUT.as_secs()
        );
        Ok(false)
    };
    let opened = block_on_bounded(
        &runtime,
        estuary_store::open(url, estuary_store::OpenMode::Existing),
    );
    let store = match opened {
        Err(_) => return bounded("the connection"),
        Ok(Ok(store)) => store,
        Ok(Err(StoreError::Missing(_))) => {
            println!("✔ database {url}: not there yet (the first `estuary serve` creates it)");
            return Ok(true);
        }
        Ok(Err(StoreError::NoSchema(_))) => {
            println!(
                "✔ database {url}: reachable, no tables yet (the first `estuary serve` creates them)"
            );
            return Ok(true);
        }
        Ok(Err(StoreError::SchemaTooOld { found, current })) => {
            println!(
                "✔ database {url}: reachable, schema version {found} (`estuary serve` upgrades it to {current}, then checks that it belongs to this CA: not checked here)"
            );
            return Ok(true);
        }
        Ok(Err(e)) => {
            println!("✘ database {url}: {e} (the server would not start)");
            return Ok(false);
        }
    };
    println!("✔ database {url}: reachable, schema of this version");
    // A SQLite store `estuary store migrate` copied into PostgreSQL is not served.
    if let estuary_store::DatabaseUrl::Sqlite(path) = url {
        match estuary_server::copied_away(path) {
            Ok(None) => {}
            Ok(Some(_)) => println!(
                "✔ database: copied into PostgreSQL earlier; ESTUARY_SERVE_COPIED_STORE=1 is set, so the start serves it all the same"
            ),
            Err(e) => {
                println!("✘ database: {e} (the server would not start)");
                return Ok(false);
            }
        }
    }
    let spki = match ca {
        CaHere::Loaded(spki) => spki,
        CaHere::None => return Ok(true),
        CaHere::NotYet => {
            // The CA the first start creates is a new key: a store that is some CA's already
            // (a key recorded, or certificates) refuses it.
            let some_cas = block_on_bounded(&runtime, async {
                let recorded = store.recorded_ca_key().await?;
                let holds = estuary_server::holds_certificates(store.as_ref()).await?;
                Ok::<_, StoreError>(recorded.is_some() || holds)
            });
            return match some_cas {
                Err(_) => bounded("a read"),
                Ok(Ok(false)) => Ok(true),
                Ok(Ok(true)) => {
                    println!(
                        "✘ database: belongs to a CA, and {} has none: the first start would create another, which the store refuses. Copy the store's CA (ca-cert.pem and ca-key.pem, or `estuary ca import` of its HSM key) into it first",
                        data_dir.display()
                    );
                    Ok(false)
                }
                Ok(Err(e)) => {
                    println!("✘ database: cannot read which CA key it belongs to: {e}");
                    Ok(false)
                }
            };
        }
    };
    let owner = block_on_bounded(&runtime, estuary_server::store_owner(store.as_ref(), spki));
    let ours = estuary_server::ca_key_id_of_spki(spki);
    let ours_hex = estuary_server::ca_key_id_hex(ours);
    let owner = match owner {
        Err(_) => return bounded("a read"),
        Ok(Err(e)) => {
            println!("✘ database: cannot read which CA key it belongs to: {e}");
            return Ok(false);
        }
        Ok(Ok(owner)) => owner,
    };
    match owner {
        StoreOwner::ThisKey => println!("✔ database: bound to this CA's key ({ours_hex})"),
        StoreOwner::Nobody => {
            println!("✔ database: bound to no CA key yet (the first start binds it to this CA's, {ours_hex})")
        }
        StoreOwner::ThisKeyUnrecorded => println!(
            "✔ database: records no CA key yet (a store of an earlier version) and holds this CA's certificates: the next start records {ours_hex}"
        ),
        StoreOwner::OtherKey(_) | StoreOwner::AnotherKeyUnrecorded => {
            if estuary_server::accepts_new_ca_key(ours) {
                println!(
                    "✔ database: belongs to another CA key ({}); ESTUARY_ACCEPT_NEW_CA_KEY={ours_hex} is set, so the start binds it to this CA's key instead",
                    owner.describe_other()
                );
            } else {
                println!(
                    "✘ database: belongs to another CA key ({}), not to this CA's ({ours_hex}): the server would not start (docs/cluster.md, \"Every node must use the same CA\")",
                    owner.describe_other()
                );
                return Ok(false);
            }
        }
    }
    Ok(true)
}
