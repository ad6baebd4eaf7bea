//! `estuary user`.

use std::io::{BufRead, IsTerminal as _};
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::config_edit::ConfigEdit;
use crate::DataArgs;

/// The shortest password `user add` accepts (characters). `serve --dev`'s tutorial user is not
/// made by this command and keeps the tutorial's password.
pub const MIN_PASSWORD_CHARS: usize = 12;

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Add a Basic user (or set a new password) in the config file; reload (kill -HUP) or restart the server to apply.
    Add {
        /// User name.
        name: String,
        #[command(flatten)]
        data: DataArgs,
        /// Read the password from the first line of standard input instead of prompting (needed
        /// without a terminal: scripts, ssh without -t, configuration management).
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a Basic user from the config file; reload (kill -HUP) or restart the server to apply.
    Remove {
        /// User name.
        name: String,
        #[command(flatten)]
        data: DataArgs,
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
            let mut edit = ConfigEdit::open(&path)?;
            let password = zeroize::Zeroizing::new(read_password(&name, password_stdin)?);
            check_password(&password)?;
            let hash = estuary_auth::hash_password(&password).map_err(anyhow::Error::msg)?;
            let updated = edit.set_user(&name, &hash)?;
            edit.save()?;
            println!(
                "{} user {name} in {} (reload the server with kill -HUP, or restart it, to apply)",
                if updated { "updated" } else { "added" },
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::Remove { name, data } => {
            let path = data.config_path();
            if !path.exists() {
                bail!("config file {} does not exist", path.display());
            }
            let mut edit = ConfigEdit::open(&path)?;
            if !edit.remove_user(&name)? {
                let names = edit.user_names();
                bail!(
                    "no user {name:?} in {} (users: {})",
                    path.display(),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                );
            }
            if let Err(e) = edit.save() {
                let hint = if format!("{e:#}").contains("no user") {
                    format!(" (an auth rule still names basic:{name}: change that rule first)")
                } else {
                    String::new()
                };
                bail!("user {name} not removed, nothing was written{hint}: {e:#}");
            }
            println!(
                "removed user {name} from {} (reload the server with kill -HUP, or restart it, to apply)",
                path.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        UserCommand::List { data } => {
            let path = data.config_path();
            if !path.exists() {
                bail!(
                    "config file {} does not exist (start `estuary serve` once, or add a user with `estuary user add NAME`)",
                    path.display()
                );
            }
            let names = ConfigEdit::open(&path)?.user_names();
            if names.is_empty() {
                eprintln!("no Basic users in {}", path.display());
            }
            for name in names {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn read_password(name: &str, password_stdin: bool) -> anyhow::Result<String> {
    if password_stdin {
        let mut line = String::new();
        let n = std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("reading the password from standard input")?;
        if n == 0 {
            bail!("--password-stdin: standard input is empty; give the password on its first line");
        }
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    // rpassword prompts on the controlling terminal; without one it fails with "No such
    // device or address (os error 6)". Piped input without --password-stdin is a mistake too.
    let no_terminal = || {
        anyhow::anyhow!(
            "no terminal to prompt for the password on; give it on standard input with --password-stdin, \
             e.g. `printf '%s\\n' \"$PASSWORD\" | estuary user add {name} --password-stdin`"
        )
    };
    if !std::io::stdin().is_terminal() {
        return Err(no_terminal());
    }
    let prompt = |text: &str| rpassword::prompt_password(text).map_err(|_| no_terminal());
    let first = prompt(&format!("Password for {name}: "))?;
    let second = prompt("Again: ")?;
    if first != second {
        bail!("the passwords differ");
    }
    Ok(first)
}

/// Refuses an empty or short password (the tutorial's `estpwd` among them).
fn check_password(password: &str) -> anyhow::Result<()> {
    if password.is_empty() {
        bail!("the password is empty");
    }
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        bail!(
            "the password is too short ({chars} characters): use at least {MIN_PASSWORD_CHARS} \
             (a few random words are fine; `openssl rand -base64 18` makes one)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_and_empty_passwords_are_refused() {
        assert!(check_password("").is_err());
        assert!(check_password("estpwd").is_err());
        // Characters, not bytes: 11 two-byte characters are still too short.
        assert!(check_password(&"é".repeat(11)).is_err());
        assert!(check_password("correct horse").is_ok());
        assert!(check_password(&"x".repeat(MIN_PASSWORD_CHARS)).is_ok());
    }
}
