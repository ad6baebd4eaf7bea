//! `estuary ca`: bring your own CA (import), create one (init, optionally as an issuing CA
//! under an offline root), and show what the server serves at /cacerts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context};
use estuary_ca::import::{self, CertificateSummary};
use estuary_ca::KeyChoice;

use crate::DataArgs;

#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Import an existing CA (e.g. an issuing CA of an enterprise PKI): its certificate, its
    /// chain up to the root and its private key. Writes DATA_DIR/ca-key.pem and ca-cert.pem.
    Import(ImportArgs),
    /// Create the CA before the first start: a root CA that issues directly (as `serve` does on
    /// its first start), or with --intermediate an issuing CA under a new root to keep offline.
    Init(InitArgs),
    /// Show the CA certificates in DATA_DIR/ca-cert.pem (what /cacerts serves, issuing CA first).
    Show {
        #[command(flatten)]
        data: DataArgs,
    },
}

#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// The CA certificate (PEM). Further certificates in the file are taken as its chain.
    #[arg(long, value_name = "FILE")]
    cert: PathBuf,
    /// The certificates from the CA's issuer up to the root (PEM, any order).
    #[arg(long, value_name = "FILE")]
    chain: Option<PathBuf>,
    /// The CA's private key (PEM): PKCS#8, encrypted PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// File whose first line is the password of an encrypted PKCS#8 key.
    #[arg(long, value_name = "FILE")]
    key_password_file: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Create an issuing CA (10 years, pathlen:1) under a new self-signed root (20 years) whose
    /// key is written to --root-dir, to be moved offline.
    #[arg(long)]
    intermediate: bool,
    /// Key type of the new CA (and root): p256, p384, rsa2048, rsa3072, rsa4096, ed25519.
    #[arg(long, value_name = "TYPE", default_value = "p256")]
    ca_key: KeyChoice,
    /// Where the new root's key and certificate go (default: DATA_DIR/offline-root).
    #[arg(long, value_name = "DIR", requires = "intermediate")]
    root_dir: Option<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
}

pub fn run(cmd: CaCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCommand::Import(args) => import_cmd(args),
        CaCommand::Init(args) => init_cmd(args),
        CaCommand::Show { data } => show_cmd(&data),
    }
}

fn import_cmd(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let data_dir = &args.data.data_dir;
    let imported = import::import_ca(
        data_dir,
        &args.cert,
        args.chain.as_deref(),
        &args.key,
        args.key_password_file.as_deref(),
    )
    .context("CA import failed; nothing was written")?;
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    let cert_file = data_dir.join(estuary_ca::bootstrap::CA_CERT_FILE);
    println!(
        "Imported the CA into {} (key: {}, mode 0600, unencrypted).",
        data_dir.display(),
        estuary_ca::bootstrap::CA_KEY_FILE
    );
    emit(&summaries_text(&import::summarize_pem_file(&cert_file)?));
    println!();
    println!(
        "/cacerts will serve these {} certificate(s). Devices must trust the last one (the root, or, if the chain does not reach a self-signed root, that certificate's issuer).",
        imported.ca.chain_der().len()
    );
    Ok(ExitCode::SUCCESS)
}

fn init_cmd(args: InitArgs) -> anyhow::Result<ExitCode> {
    let data_dir = &args.data.data_dir;
    if let Some(existing) = import::existing_ca(data_dir) {
        bail!(
            "{}: a CA already exists in this data directory; refusing to replace it",
            existing.display()
        );
    }
    let cert_file = data_dir.join(estuary_ca::bootstrap::CA_CERT_FILE);
    if args.intermediate {
        let root_dir = args
            .root_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("offline-root"));
        let made = import::create_intermediate_ca(data_dir, &root_dir, args.ca_key)
            .context("creating the issuing CA failed")?;
        println!(
            "Created an issuing CA in {} under a new root CA in {}.",
            data_dir.display(),
            root_dir.display()
        );
        emit(&summaries_text(&import::summarize_pem_file(&cert_file)?));
        println!();
        println!(
            "IMPORTANT: move {} offline now (e.g. to an encrypted USB stick or a safe); the server never needs it, only a new issuing CA does.",
            made.root_key_path.display()
        );
        println!(
            "Devices trust {} (the root); /cacerts serves [issuing CA, root].",
            made.root_cert_path.display()
        );
    } else {
        let (_, created) = estuary_ca::bootstrap::load_or_create_ca(data_dir, args.ca_key)?;
        if !created {
            bail!("a CA already exists in {}", data_dir.display());
        }
        println!(
            "Created a root CA in {} (it issues directly, as `estuary serve` does on its first start).",
            data_dir.display()
        );
        emit(&summaries_text(&import::summarize_pem_file(&cert_file)?));
        println!();
        println!("Devices trust {}.", cert_file.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn show_cmd(data: &DataArgs) -> anyhow::Result<ExitCode> {
    let cert_file = data.data_dir.join(estuary_ca::bootstrap::CA_CERT_FILE);
    if !cert_file.exists() {
        bail!(
            "{}: no CA yet (create one with `estuary ca init` or `estuary ca import`, or start `estuary serve`)",
            cert_file.display()
        );
    }
    emit(&summaries_text(&import::summarize_pem_file(&cert_file)?));
    Ok(ExitCode::SUCCESS)
}

/// Writes to stdout, ignoring a closed pipe (`estuary ca show | head`).
fn emit(text: &str) {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|()| out.flush());
}

fn summaries_text(certs: &[CertificateSummary]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let n = certs.len();
    for (i, c) in certs.iter().enumerate() {
        let role = match (i, c.self_issued) {
            (0, true) => "issuing CA, root",
            (0, false) => "issuing CA",
            (_, true) => "root",
            _ => "intermediate",
        };
        let _ = writeln!(s);
        let _ = writeln!(s, "Certificate {} of {n} ({role})", i + 1);
        let _ = writeln!(s, "  Subject:     {}", c.subject);
        let _ = writeln!(s, "  Issuer:      {}", c.issuer);
        let _ = writeln!(s, "  Serial:      {}", c.serial_hex);
        let _ = writeln!(s, "  Not before:  {}", time_text(c.not_before));
        let _ = writeln!(s, "  Not after:   {}", time_text(c.not_after));
        let _ = writeln!(s, "  SHA-256:     {}", colon_hex(&c.sha256_fingerprint));
        let ca = match (c.is_ca, c.path_len) {
            (true, Some(p)) => format!("CA:TRUE, pathlen:{p}"),
            (true, None) => "CA:TRUE".to_string(),
            (false, _) => "CA:FALSE".to_string(),
        };
        let _ = writeln!(s, "  Constraints: {ca}");
    }
    s
}

fn time_text(t: SystemTime) -> String {
    let unix = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    crate::certs_cmd::format_time(unix)
}

/// `AB:CD:...`, as `openssl x509 -fingerprint -sha256` prints it.
fn colon_hex(hex: &str) -> String {
    hex.as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}
