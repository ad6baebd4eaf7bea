//! `estuary ca`: bring your own CA (import), create one (init, optionally as an issuing CA
//! under an offline root), and show what the server serves at /cacerts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{bail, Context};
use estuary_ca::import::{self, CertificateSummary};
use estuary_ca::pkcs11::Pkcs11Uri;
use estuary_ca::KeyChoice;

use crate::config_edit::ConfigEdit;
use crate::DataArgs;

#[derive(Debug, clap::Subcommand)]
pub enum CaCommand {
    /// Import an existing CA (e.g. an issuing CA of an enterprise PKI): its certificate, its
    /// chain up to the root and its private key. Writes DATA_DIR/ca-key.pem and ca-cert.pem;
    /// with --key-uri the key stays in its PKCS#11 token and only ca-cert.pem is written.
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
    #[arg(long, value_name = "FILE", required_unless_present = "key_uri")]
    key: Option<PathBuf>,
    /// File whose first line is the password of an encrypted PKCS#8 key.
    #[arg(long, value_name = "FILE", conflicts_with = "key_uri")]
    key_password_file: Option<PathBuf>,
    /// The CA's key in a PKCS#11 token (RFC 7512 URI, e.g.
    /// 'pkcs11:token=T;object=K?module-path=LIB&pin-source=file:/PATH'); recorded as
    /// ca_key_uri in the config file. The token's public key must be the certificate's.
    #[arg(long, value_name = "URI", conflicts_with = "key")]
    key_uri: Option<String>,
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
    /// Make the CA's key (with --intermediate: the issuing CA's key) in a PKCS#11 token, named
    /// by an RFC 7512 URI: 'pkcs11:token=T;object=LABEL?module-path=LIB&pin-source=file:/PATH'.
    /// No ca-key.pem is written; the URI is recorded as ca_key_uri in the config file.
    #[arg(long, value_name = "URI")]
    key_uri: Option<String>,
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

/// A `--key-uri` from the command line: parsed, and refused when it carries the PIN
/// (`pin-value` would show in `ps` and the shell's history).
fn command_line_key_uri(text: &str) -> anyhow::Result<Pkcs11Uri> {
    let uri = Pkcs11Uri::parse(text)?;
    if uri.has_pin_value() {
        bail!(
            "--key-uri: pin-value puts the PIN in the process list and the shell history; write \
             the PIN to a file (mode 0600) and use pin-source=file:/ABSOLUTE/PATH instead"
        );
    }
    Ok(uri)
}

/// Records `ca_key_uri` in the config file, so that `serve` signs through the token.
fn record_key_uri(data: &DataArgs, uri: &Pkcs11Uri) -> anyhow::Result<()> {
    let path = data.config_path();
    ConfigEdit::open(&path)
        .and_then(|mut edit| {
            edit.set_ca_key_uri(&uri.to_string());
            edit.save()
        })
        .with_context(|| {
            format!(
                "the CA is made, but recording its key in {} failed; add this line to it by hand:\nca_key_uri = {:?}",
                path.display(),
                uri.to_string()
            )
        })?;
    println!(
        "Recorded ca_key_uri in {}: `estuary serve` signs with the key in the token.",
        path.display()
    );
    Ok(())
}

fn import_cmd(args: ImportArgs) -> anyhow::Result<ExitCode> {
    let data_dir = &args.data.data_dir;
    let uri = args
        .key_uri
        .as_deref()
        .map(command_line_key_uri)
        .transpose()?;
    let key = match (&uri, &args.key) {
        (Some(uri), _) => import::CaKeySource::Token(uri),
        (None, Some(path)) => import::CaKeySource::File {
            path,
            password_file: args.key_password_file.as_deref(),
        },
        (None, None) => bail!("give the CA's key: --key FILE or --key-uri URI"),
    };
    let imported = import::import_ca_with_key(data_dir, &args.cert, args.chain.as_deref(), key)
        .context("CA import failed; nothing was written")?;
    for w in &imported.warnings {
        eprintln!("warning: {w}");
    }
    let cert_file = data_dir.join(estuary_ca::bootstrap::CA_CERT_FILE);
    match &uri {
        Some(uri) => {
            println!(
                "Imported the CA into {} (key: in the PKCS#11 token, {}; no key file).",
                data_dir.display(),
                uri.describe()
            );
            record_key_uri(&args.data, uri)?;
        }
        None => println!(
            "Imported the CA into {} (key: {}, mode 0600, unencrypted).",
            data_dir.display(),
            estuary_ca::bootstrap::CA_KEY_FILE
        ),
    }
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
    let uri = args
        .key_uri
        .as_deref()
        .map(command_line_key_uri)
        .transpose()?;
    if args.intermediate {
        let root_dir = args
            .root_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("offline-root"));
        let made =
            import::create_intermediate_ca_with_key(data_dir, &root_dir, args.ca_key, uri.as_ref())
                .context("creating the issuing CA failed")?;
        if let Some(uri) = &uri {
            println!(
                "The issuing CA's key was made in the PKCS#11 token ({}); no key file was written.",
                uri.describe()
            );
            record_key_uri(&args.data, uri)?;
        }
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
    } else if let Some(uri) = &uri {
        estuary_ca::bootstrap::create_root_in_token(data_dir, uri, args.ca_key)
            .context("creating the CA in the PKCS#11 token failed")?;
        println!(
            "Created a root CA in {} with its key in the PKCS#11 token ({}); no key file was written.",
            data_dir.display(),
            uri.describe()
        );
        record_key_uri(&args.data, uri)?;
        emit(&summaries_text(&import::summarize_pem_file(&cert_file)?));
        println!();
        println!("Devices trust {}.", cert_file.display());
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
