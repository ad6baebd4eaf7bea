//! `estuary config check`: validate a config file and show what each label allows.

use std::path::PathBuf;
use std::process::ExitCode;

use estuary_server::config::ConfigFile;

#[derive(Debug, clap::Subcommand)]
pub enum ConfigCommand {
    /// Parse and check a config file; print what each label allows. Non-zero exit on errors.
    Check {
        /// The file (default: DATA_DIR/estuary.toml). Relative paths in it are taken from
        /// --data-dir when that is given (as `serve --config FILE --data-dir DIR` does), else
        /// from the file's directory.
        file: Option<PathBuf>,
        #[command(flatten)]
        data: crate::DataArgs,
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
    let path = file.unwrap_or_else(|| data.config_path());
    let settings =
        match ConfigFile::read(&path).and_then(|f| f.resolve().map_err(|e| e.in_file(&path))) {
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
    // The CA key in a PKCS#11 token: reachable, PIN accepted, and the key of ca-cert.pem.
    if let Some(uri) = &settings.ca_key_uri {
        match estuary_ca::bootstrap::load_ca_from_token(&data.data_dir, uri) {
            Ok(ca) => println!(
                "✔ CA key in the PKCS#11 token ({}): reachable, and the key of {} ({})",
                uri.describe(),
                data.data_dir
                    .join(estuary_ca::bootstrap::CA_CERT_FILE)
                    .display(),
                ca.certificate().tbs_certificate.subject
            ),
            Err(e) => {
                ok = false;
                println!("✘ ca_key_uri: {e} (the server would not start)");
            }
        }
    }
    // The database `[database] url` names: reachable, with credentials that work, and a schema
    // this version can use.
    if let Some(url) = &settings.database {
        use estuary_store::StoreError;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        match runtime.block_on(estuary_store::open(url, estuary_store::OpenMode::Existing)) {
            Ok(store) => {
                println!("✔ database {url}: reachable, schema of this version");
                if settings.upstream.is_none() {
                    let recorded = runtime.block_on(store.recorded_ca_key());
                    ok &= check_ca_binding(&data.data_dir, recorded);
                }
            }
            Err(StoreError::NoSchema(_) | StoreError::Missing(_)) => println!(
                "✔ database {url}: reachable, no tables yet (the first `estuary serve` creates them)"
            ),
            Err(StoreError::SchemaTooOld { found, current }) => println!(
                "✔ database {url}: reachable, schema version {found} (`estuary serve` upgrades it to {current})"
            ),
            Err(e) => {
                ok = false;
                println!("✘ database.url: {e} (the server would not start)");
            }
        }
    }
    println!("✔ {} parses", path.display());
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

/// Whether the store is bound to the key of the CA in `data_dir` (`estuary serve` refuses a
/// store bound to another CA key: docs/cluster.md). Prints what it found; false on a mismatch.
fn check_ca_binding(
    data_dir: &std::path::Path,
    recorded: Result<Option<i64>, estuary_store::StoreError>,
) -> bool {
    let cert_path = data_dir.join(estuary_ca::bootstrap::CA_CERT_FILE);
    let recorded = match recorded {
        Ok(recorded) => recorded,
        Err(e) => {
            println!("✘ database: cannot read the CA key it is bound to: {e}");
            return false;
        }
    };
    let ours = match ca_spki_of(&cert_path) {
        Ok(Some(spki)) => estuary_server::ca_key_id_of_spki(&spki),
        Ok(None) => {
            match recorded {
                Some(id) => println!(
                    "✔ database: bound to CA key {:016x}; {} is not here yet (the first start creates a CA, which that store would refuse: copy the cluster's CA into {} first)",
                    id as u64,
                    cert_path.display(),
                    data_dir.display()
                ),
                None => println!("✔ database: bound to no CA key yet"),
            }
            return true;
        }
        Err(e) => {
            println!("✘ {}: {e}", cert_path.display());
            return false;
        }
    };
    match recorded {
        Some(id) if id == ours => {
            println!("✔ database: bound to this CA's key ({:016x})", ours as u64);
            true
        }
        Some(id) => {
            println!(
                "✘ database: bound to CA key {:016x}, not to the key of {} ({:016x}): the server would not start (docs/cluster.md, \"One store, one CA\")",
                id as u64,
                cert_path.display(),
                ours as u64
            );
            false
        }
        None => {
            println!(
                "✔ database: bound to no CA key yet (the first start binds it to {:016x}, the key of {})",
                ours as u64,
                cert_path.display()
            );
            true
        }
    }
}

/// The DER SubjectPublicKeyInfo of the first certificate in `path`; `None` if there is no file.
fn ca_spki_of(path: &std::path::Path) -> anyhow::Result<Option<Vec<u8>>> {
    use der::{Decode as _, Encode as _};
    if !path.exists() {
        return Ok(None);
    }
    let ders = estuary_ca::bootstrap::read_pem_certificates(path)?;
    let first = ders
        .first()
        .ok_or_else(|| anyhow::anyhow!("holds no certificate"))?;
    let cert = x509_cert::Certificate::from_der(first)?;
    Ok(Some(cert.tbs_certificate.subject_public_key_info.to_der()?))
}
