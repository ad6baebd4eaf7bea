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

/// Exit status when the server holds the request for manual approval (EX_TEMPFAIL): run the
/// same command again later.
const EXIT_PENDING: u8 = 75;

/// `OUT_CERT.csr.pending`: the CSR of a request waiting for approval, as sent.
fn pending_csr_path(out_cert: &Path) -> PathBuf {
    files::with_suffix(out_cert, ".csr.pending")
}

/// `OUT_KEY.pending`: the new key of that request (0600), until its certificate arrives.
fn pending_key_path(out_key: &Path) -> PathBuf {
    files::with_suffix(out_key, ".pending")
}

/// Sends an enrollment whose request survives a 202 (RFC 7030 §4.2.3: the client sends the
/// same request again). The CSR (and a new key) are written next to the output paths before
/// sending; a later run with the same output paths finds them and resends the CSR byte for
/// byte, until the server answers 200 (then they become the outputs) or 403 (then they are
/// removed). `build` makes the CSR for a key; `key` is used unless a pending one is found.
async fn send_enrollment(
    client: &EstClient,
    reenroll: bool,
    key: FileKeySigner,
    is_new: bool,
    build: impl Fn(&FileKeySigner) -> anyhow::Result<Vec<u8>>,
    out_cert: &Path,
    out_key: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let csr_path = pending_csr_path(out_cert);
    let key_path = out_key.filter(|_| is_new).map(pending_key_path);
    let remove_pending = || {
        let _ = std::fs::remove_file(&csr_path);
        if let Some(k) = &key_path {
            let _ = std::fs::remove_file(k);
        }
    };
    // A request from an earlier run that waits for approval (or whose answer never came)?
    // Only files an earlier run wrote: regular files of this user that nobody else can write
    // (they sit next to the outputs, perhaps in a shared directory: a planted key would be
    // certified and become the output key).
    let own = |path: &Path| {
        files::check_own_file(path).map_err(|why| {
            anyhow::anyhow!(
                "refusing the pending request file {}: it {why}; it was not written by an earlier run of this command as this user. Remove it (rm {}) to send a new request",
                path.display(),
                path.display()
            )
        })
    };
    let mut found: Option<(Option<FileKeySigner>, Vec<u8>)> = None;
    if files::is_present(&csr_path) {
        own(&csr_path)?;
        let pending_key = match &key_path {
            Some(k) if files::is_present(k) => {
                own(k)?;
                Some(Some(files::read_own_key(k)?))
            }
            Some(_) => None,
            None => Some(None),
        };
        let csr = files::read_own_csr(&csr_path)?;
        match pending_key {
            Some(k)
                if estuary_client::csr::same_request(&csr, &build(k.as_ref().unwrap_or(&key))?) =>
            {
                eprintln!(
                    "resending the request from an earlier run ({}) byte for byte",
                    csr_path.display()
                );
                found = Some((k, csr));
            }
            _ => {
                eprintln!(
                    "{} is not for this request (other subject, SANs or key): sending a new one",
                    csr_path.display()
                );
                remove_pending();
            }
        }
    }
    let resending = found.is_some();
    let (key, csr) = match found {
        Some((pending_key, csr)) => (pending_key.unwrap_or(key), csr),
        None => {
            let csr = build(&key)?;
            // Written before sending, so that a 202 (or a lost answer) can be completed later.
            if let Some(k) = &key_path {
                files::write_key(k, &key)?;
            }
            files::write_csr(&csr_path, &csr)?;
            (key, csr)
        }
    };
    let answer = if reenroll {
        client.simplereenroll(&csr).await
    } else {
        client.simpleenroll(&csr).await
    };
    match answer {
        Ok(EnrollOutcome::Issued(certs)) => {
            let cert = certs
                .first()
                .ok_or_else(|| anyhow::anyhow!("the response holds no certificate"))?;
            let written = write_outputs(cert, &key, is_new, out_cert, out_key)?;
            // Before anything is printed: a failed print (closed stdout) must not leave the
            // request behind to be sent again by the next run.
            remove_pending();
            print_written(&written, cert)?;
            Ok(ExitCode::SUCCESS)
        }
        Ok(EnrollOutcome::Pending {
            retry_after,
            request_id,
        }) => {
            let kept = match &key_path {
                Some(k) => format!("{} and {}", k.display(), csr_path.display()),
                None => csr_path.display().to_string(),
            };
            eprintln!(
                "202 Accepted: {}",
                estuary_client::pending_instructions(
                    request_id.as_deref(),
                    retry_after,
                    &format!(
                        "then run this same command again, with the same output paths: it sends the same request ({kept}) again and writes the certificate once approved"
                    ),
                )
            );
            Ok(ExitCode::from(EXIT_PENDING))
        }
        Err(e @ estuary_client::ClientError::Status { status: 403, .. }) => {
            remove_pending();
            Err(anyhow::Error::new(e)
                .context("the server refused the request; a new run sends a new one"))
        }
        Err(e @ estuary_client::ClientError::Status { status, .. })
            if !resending && (400..500).contains(&status) && status != 429 =>
        {
            // Refused before it was recorded (e.g. 401): nothing to resend.
            remove_pending();
            Err(e.into())
        }
        Err(e) => {
            let err = anyhow::Error::new(e);
            Err(err.context(format!(
                "the request is kept in {}: run the same command again to resend it",
                csr_path.display()
            )))
        }
    }
}

/// Writes the key (if new) then the certificate; both atomically. Returns the files written,
/// for [`print_written`].
fn write_outputs(
    cert: &[u8],
    key: &FileKeySigner,
    new_key: bool,
    out_cert: &Path,
    out_key: Option<&Path>,
) -> anyhow::Result<Vec<String>> {
    if !files::key_matches(cert, key) {
        bail!("the issued certificate is not for the requested key; nothing written");
    }
    let mut written = Vec::new();
    if new_key {
        if let Some(path) = out_key {
            files::write_key(path, key)?;
            written.push(format!("wrote key {}", path.display()));
        }
    }
    files::write_certificates(out_cert, &[cert.to_vec()])?;
    written.push(format!("wrote certificate {}", out_cert.display()));
    Ok(written)
}

/// What [`write_outputs`] wrote, and the certificate.
fn print_written(written: &[String], cert: &[u8]) -> anyhow::Result<()> {
    for line in written {
        println!("{line}");
    }
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
            let sans = parse_sans(&san)?;
            let build = |key: &FileKeySigner| -> anyhow::Result<Vec<u8>> {
                let mut extensions = Vec::new();
                if !sans.is_empty() {
                    extensions.push(san_extension(&sans)?);
                }
                Ok(build_csr(key, subject_with_common_name(&cn)?, extensions)?)
            };
            send_enrollment(
                &b.build()?,
                false,
                subject_key,
                is_new,
                build,
                &out_cert,
                out_key.as_deref(),
            )
            .await
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
            let build = |key: &FileKeySigner| Ok(renewal_csr(key, leaf)?);
            send_enrollment(
                &client,
                true,
                subject_key,
                is_new,
                build,
                &out_cert,
                out_key.as_deref(),
            )
            .await
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
            let written = write_outputs(cert_der, &key, false, &out_cert, None)?;
            print_written(&written, cert_der)?;
            println!("wrote key {}", out_key.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
