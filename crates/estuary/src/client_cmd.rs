//! `estuary client`: one-shot EST operations against any RFC 7030 server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use estuary_ca::issue::SanEntry;
use estuary_ca::{FileKeySigner, KeyChoice};
use estuary_client::csr::{build_csr, renewal_csr, san_extension, subject_with_common_name};
use estuary_client::files::{self, format_time, summarize};
use estuary_client::{EnrollOutcome, EstClient, EstClientBuilder, EstUrl};

#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// EST server URL, e.g. https://localhost:8085/.well-known/est (a URL without a path gets /.well-known/est).
    #[arg(long)]
    url: String,
    /// PEM file of the CA(s) that the server's TLS certificate must chain to.
    #[arg(long, value_name = "FILE")]
    ca: PathBuf,
    /// EST label (/.well-known/est/<label>/...).
    #[arg(long)]
    label: Option<String>,
    #[command(flatten)]
    basic: BasicArgs,
}

#[derive(Debug, clap::Args)]
pub struct BasicArgs {
    /// HTTP Basic user.
    #[arg(long)]
    user: Option<String>,
    /// HTTP Basic password (prefer --password-file or ESTUARY_PASSWORD).
    #[arg(
        long,
        env = "ESTUARY_PASSWORD",
        hide_env_values = true,
        conflicts_with = "password_file"
    )]
    password: Option<String>,
    /// File whose first line is the HTTP Basic password.
    #[arg(long, value_name = "FILE")]
    password_file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Fetch the CA certificates (GET /cacerts), print them and write them as PEM.
    Cacerts {
        /// EST server URL.
        #[arg(long)]
        url: String,
        /// PEM file of the CA(s) the server's TLS certificate must chain to.
        #[arg(
            long,
            value_name = "FILE",
            required_unless_present = "tofu",
            conflicts_with = "tofu"
        )]
        ca: Option<PathBuf>,
        /// Trust on first use: do not verify the server; print fingerprints to confirm out of band (RFC 7030 §4.1.1).
        #[arg(long)]
        tofu: bool,
        /// Write the CA certificates here (PEM).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        /// EST label.
        #[arg(long)]
        label: Option<String>,
    },
    /// Enroll (POST /simpleenroll): make or use a key, send a CSR, write the certificate.
    Enroll {
        #[command(flatten)]
        server: ServerArgs,
        /// Subject common name.
        #[arg(long)]
        cn: String,
        /// subjectAltName entry (repeatable): DNS:name or IP:address.
        #[arg(long, value_name = "DNS:..|IP:..")]
        san: Vec<String>,
        /// Type of a new key (default p256); implies a new key.
        #[arg(long, value_name = "TYPE")]
        key_type: Option<KeyChoice>,
        /// Without --cert: an existing private key to certify. With --cert: the key of that TLS
        /// client certificate, which is also certified unless --key-type or --out-key ask for a
        /// new key.
        #[arg(long, value_name = "FILE")]
        key: Option<PathBuf>,
        /// TLS client certificate (e.g. the certificate being renewed, or a bootstrap certificate).
        #[arg(long, value_name = "FILE", requires = "key")]
        cert: Option<PathBuf>,
        /// Where to write the issued certificate (PEM).
        #[arg(long, value_name = "FILE")]
        out_cert: PathBuf,
        /// Where to write a new private key (PEM, mode 0600).
        #[arg(long, value_name = "FILE")]
        out_key: Option<PathBuf>,
    },
    /// Re-enroll (POST /simplereenroll) with the certificate being renewed as TLS client certificate.
    Reenroll {
        #[command(flatten)]
        server: ServerArgs,
        /// The certificate to renew (also the TLS client certificate).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// Its private key.
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// Certify a new key instead of the current one.
        #[arg(long)]
        rotate_key: bool,
        /// Type of the new key with --rotate-key (default: p256).
        #[arg(long, value_name = "TYPE")]
        key_type: Option<KeyChoice>,
        /// Where to write the new certificate (PEM).
        #[arg(long, value_name = "FILE")]
        out_cert: PathBuf,
        /// Where to write the new key with --rotate-key (PEM, mode 0600).
        #[arg(long, value_name = "FILE")]
        out_key: Option<PathBuf>,
    },
    /// Ask which CSR attributes the server wants (GET /csrattrs).
    Csrattrs {
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Let the server generate the key (POST /serverkeygen), for servers that support it.
    Serverkeygen {
        #[command(flatten)]
        server: ServerArgs,
        /// Subject common name.
        #[arg(long)]
        cn: String,
        /// subjectAltName entry (repeatable): DNS:name or IP:address.
        #[arg(long, value_name = "DNS:..|IP:..")]
        san: Vec<String>,
        /// Where to write the certificate (PEM).
        #[arg(long, value_name = "FILE")]
        out_cert: PathBuf,
        /// Where to write the server-generated key (PEM, mode 0600).
        #[arg(long, value_name = "FILE")]
        out_key: PathBuf,
    },
}

fn password(basic: &BasicArgs) -> anyhow::Result<Option<(String, String)>> {
    let Some(user) = &basic.user else {
        if basic.password.is_some() || basic.password_file.is_some() {
            bail!("--password and --password-file need --user");
        }
        return Ok(None);
    };
    let password = match (&basic.password, &basic.password_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .with_context(|| f.display().to_string())?
            .lines()
            .next()
            .unwrap_or_default()
            .to_string(),
        (None, None) => bail!("--user needs --password, --password-file or ESTUARY_PASSWORD"),
    };
    Ok(Some((user.clone(), password)))
}

fn builder(server: &ServerArgs) -> anyhow::Result<EstClientBuilder> {
    let url = EstUrl::parse(&server.url).map_err(anyhow::Error::msg)?;
    let anchors = files::read_certificates(&server.ca).map_err(|e| anyhow::anyhow!("--ca: {e}"))?;
    let mut b = EstClient::builder(url)
        .trust_anchors(anchors)
        .label(server.label.clone());
    if let Some((u, p)) = password(&server.basic)? {
        b = b.basic_auth(&u, &p);
    }
    Ok(b)
}

fn print_certificate(prefix: &str, der: &[u8]) -> anyhow::Result<()> {
    let s = summarize(der)?;
    println!("{prefix}subject:   {}", s.subject);
    println!("{prefix}issuer:    {}", s.issuer);
    println!(
        "{prefix}valid:     {} to {}",
        format_time(s.not_before),
        format_time(s.not_after)
    );
    println!("{prefix}SHA-256:   {}", s.sha256);
    Ok(())
}

fn parse_sans(sans: &[String]) -> anyhow::Result<Vec<SanEntry>> {
    sans.iter()
        .map(|s| {
            s.parse::<SanEntry>()
                .map_err(|e| anyhow::anyhow!("--san: {e}"))
        })
        .collect()
}

fn new_key(choice: Option<KeyChoice>, out_key: Option<&Path>) -> anyhow::Result<FileKeySigner> {
    if out_key.is_none() {
        bail!("a new key is generated: give --out-key FILE to keep it (or --key FILE to certify an existing key)");
    }
    Ok(FileKeySigner::new(
        choice.unwrap_or(KeyChoice::P256).generate()?,
    )?)
}

fn issued(outcome: EnrollOutcome) -> anyhow::Result<Vec<u8>> {
    match outcome {
        EnrollOutcome::Issued(certs) => certs
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the response holds no certificate")),
        EnrollOutcome::Pending { retry_after } => bail!(
            "the server accepted the request for manual approval (202); send the same request again{}",
            retry_after.map_or(String::new(), |d| format!(" after {}s", d.as_secs()))
        ),
    }
}

/// Writes the key (if new) then the certificate; both atomically.
fn write_outputs(
    cert: &[u8],
    key: &FileKeySigner,
    new_key: bool,
    out_cert: &Path,
    out_key: Option<&Path>,
) -> anyhow::Result<()> {
    if !files::key_matches(cert, key) {
        bail!("the issued certificate is not for the requested key; nothing written");
    }
    if new_key {
        if let Some(path) = out_key {
            files::write_key(path, key)?;
            println!("wrote key {}", path.display());
        }
    }
    files::write_certificates(out_cert, &[cert.to_vec()])?;
    println!("wrote certificate {}", out_cert.display());
    print_certificate("  ", cert)
}

pub fn run(cmd: ClientCommand) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run_async(cmd))
}

async fn run_async(cmd: ClientCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        ClientCommand::Cacerts {
            url,
            ca,
            tofu,
            out,
            label,
        } => {
            let url = EstUrl::parse(&url).map_err(anyhow::Error::msg)?;
            let mut b = EstClient::builder(url).label(label);
            b = match (&ca, tofu) {
                (Some(ca), _) => b.trust_anchors(
                    files::read_certificates(ca).map_err(|e| anyhow::anyhow!("--ca: {e}"))?,
                ),
                (None, true) => b.trust_on_first_use(),
                (None, false) => bail!("give --ca FILE, or --tofu to trust on first use"),
            };
            let client = b.build()?;
            let certs = client.cacerts().await?;
            if tofu {
                eprintln!("WARNING: trust on first use: the server was NOT verified. Confirm the fingerprints below");
                eprintln!("out of band (RFC 7030 §4.1.1) before trusting these certificates.");
                for (i, der) in client.observed_server_chain().iter().enumerate() {
                    let s = summarize(der)?;
                    eprintln!("TLS server chain [{i}]: {} SHA-256 {}", s.subject, s.sha256);
                }
            }
            for (i, der) in certs.iter().enumerate() {
                println!("CA certificate {}:", i + 1);
                print_certificate("  ", der)?;
            }
            let pem = estuary_ca::bootstrap::pem_certificates(&certs);
            match out {
                Some(path) => {
                    files::write_certificates(&path, &certs)?;
                    println!("wrote {}", path.display());
                }
                None => print!("{pem}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Enroll {
            server,
            cn,
            san,
            key_type,
            key,
            cert,
            out_cert,
            out_key,
        } => {
            let mut b = builder(&server)?;
            let existing = key.as_ref().map(|p| files::read_key(p)).transpose()?;
            if let (Some(cert_path), Some(key_path)) = (&cert, &key) {
                let chain = files::read_certificates(cert_path)?;
                let client_key = files::read_key(key_path)?;
                b = b.client_identity(chain, client_key.key_pair().serialize_der());
            }
            // A new key when asked for (--key-type or --out-key) or when there is none; else the
            // key of --key (with --cert: the same key re-certified, as IoT Edge renews).
            let want_new = key_type.is_some() || out_key.is_some();
            let (subject_key, is_new) = match existing {
                Some(_) if want_new && cert.is_none() => bail!(
                    "--key names a key to certify, and --key-type/--out-key ask for a new one: give one or the other"
                ),
                Some(k) if !want_new => (k, false),
                _ => (new_key(key_type, out_key.as_deref())?, true),
            };
            let mut extensions = Vec::new();
            let sans = parse_sans(&san)?;
            if !sans.is_empty() {
                extensions.push(san_extension(&sans)?);
            }
            let csr = build_csr(&subject_key, subject_with_common_name(&cn)?, extensions)?;
            let cert_der = issued(b.build()?.simpleenroll(&csr).await?)?;
            write_outputs(
                &cert_der,
                &subject_key,
                is_new,
                &out_cert,
                out_key.as_deref(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Reenroll {
            server,
            cert,
            key,
            rotate_key,
            key_type,
            out_cert,
            out_key,
        } => {
            let chain = files::read_certificates(&cert)?;
            let current_key = files::read_key(&key)?;
            let leaf = chain
                .first()
                .ok_or_else(|| anyhow::anyhow!("--cert holds no certificate"))?;
            if !files::key_matches(leaf, &current_key) {
                bail!("--key does not belong to --cert");
            }
            let client = builder(&server)?
                .client_identity(chain.clone(), current_key.key_pair().serialize_der())
                .build()?;
            let (subject_key, is_new) = if rotate_key {
                (new_key(key_type, out_key.as_deref())?, true)
            } else {
                (current_key, false)
            };
            let csr = renewal_csr(&subject_key, leaf)?;
            let cert_der = issued(client.simplereenroll(&csr).await?)?;
            write_outputs(
                &cert_der,
                &subject_key,
                is_new,
                &out_cert,
                out_key.as_deref(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Csrattrs { server } => {
            match builder(&server)?.build()?.csrattrs().await? {
                None => println!("the server asks for no particular CSR attributes (204)"),
                Some(der) => {
                    for line in estuary_wire::csrattrs::describe(&der) {
                        println!("{line}");
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ClientCommand::Serverkeygen {
            server,
            cn,
            san,
            out_cert,
            out_key,
        } => {
            // RFC 7030 §4.4.1: the CSR is signed with a key of the client's; the server makes the real one.
            let throwaway = FileKeySigner::new(KeyChoice::P256.generate()?)?;
            let mut extensions = Vec::new();
            let sans = parse_sans(&san)?;
            if !sans.is_empty() {
                extensions.push(san_extension(&sans)?);
            }
            let csr = build_csr(&throwaway, subject_with_common_name(&cn)?, extensions)?;
            let result = builder(&server)?.build()?.serverkeygen(&csr).await?;
            let cert_der = result
                .certificates
                .first()
                .ok_or_else(|| anyhow::anyhow!("the response holds no certificate"))?;
            files::write_key_der(&out_key, &result.key_pkcs8)?;
            let key = files::read_key(&out_key)?;
            write_outputs(cert_der, &key, false, &out_cert, None)?;
            println!("wrote key {}", out_key.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
