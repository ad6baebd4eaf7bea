//! `estuary user`.

use std::io::BufRead;
use std::process::ExitCode;

use anyhow::{bail, Context};
use estuary_server::config::{ConfigFile, UserConfig};

use crate::DataArgs;

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add a Basic user (or set a new password) in the config file; reload (kill -HUP) or restart the server to apply.
    Add {
        /// User name.
        name: String,
        #[command(flatten)]
        data: DataArgs,
        /// Read the password from the first line of standard input instead of prompting.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List the Basic users.
    List {
        #[command(flatten)]
        data: DataArgs,
    },
}

pub fn run(cmd: UserCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UserCommand::Add {
            name,
            data,
            password_stdin,
        } => {
            if name.is_empty() || name.contains(':') {
                bail!("user name must be non-empty and must not contain ':' (RFC 7617)");
            }
            let path = data.config_path();
            let mut file = if path.exists() {
                ConfigFile::read(&path).map_err(anyhow::Error::msg)?
            } else {
                ConfigFile::new_default(false)
            };
            let password = if password_stdin {
                let mut line = String::new();
                std::io::stdin().lock().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_string()
            } else {
                let first = rpassword::prompt_password(format!("Password for {name}: "))?;
                let second = rpassword::prompt_password("Again: ")?;
                if first != second {
                    bail!("the passwords differ");
                }
                first
            };
            if password.is_empty() {
                bail!("the password is empty");
            }
            let hash = estuary_auth::hash_password(&password).map_err(anyhow::Error::msg)?;
            let updated = match file.users.iter_mut().find(|u| u.name == name) {
                Some(u) => {
                    u.password_hash = hash;
                    true
                }
                None => {
                    file.users.push(UserConfig {
                        name: name.clone(),
                        password_hash: hash,
                    });
                    false
                }
            };
            file.resolve().map_err(anyhow::Error::msg)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
            }
            estuary_ca::bootstrap::write_atomic(&path, file.to_commented_toml().as_bytes(), 0o600)?;
            println!(
                "{} user {name} in {} (reload the server with kill -HUP, or restart it, to apply)",
                if updated { "updated" } else { "added" },
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::List { data } => {
            let file = ConfigFile::read(&data.config_path()).map_err(anyhow::Error::msg)?;
            for u in &file.users {
                println!("{}", u.name);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
