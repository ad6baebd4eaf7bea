//! Changes to the config file made by commands (`user add`, `user remove`, `serve --san`,
//! `ca init --key-uri`, `ca import --key-uri`):
//! edited in place with `toml_edit`, so the operator's comments, order and formatting stay.
//! The edited text is checked as a whole (parse and resolve) before it replaces the file, and
//! the file keeps its owner and its group read bit (a root shell editing the service user's
//! file must not leave a file the service cannot read). The owner is given to the new file
//! through its open handle before it replaces the old one, never by path afterwards: the
//! service user owns the directory and could swap in a symbolic link meanwhile. A config file
//! that is a symbolic link is refused.
//!
//! A file that was already invalid before the edit (two auth rules naming users not added
//! yet) is checked but only warned about, unless the edit itself causes the error (removing
//! a user a rule names): otherwise adding the first of those users would be refused forever.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use estuary_server::config::ConfigFile;
use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Table};

/// A config file being edited.
pub struct ConfigEdit {
    path: PathBuf,
    doc: DocumentMut,
    existed: bool,
    /// Why the file as it was did not resolve, if it did not.
    original_error: Option<String>,
    /// The users removed by this edit.
    removed: Vec<String>,
}

impl ConfigEdit {
    /// Opens `path`, or the commented defaults of a new installation if it does not exist.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        // Not through a symbolic link (this may run as root in a directory another user
        // owns), and only a regular file of sane size (not a FIFO or a device).
        let existed = match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_symlink() => anyhow::bail!(
                "{} is a symbolic link: refusing to edit through it (edit the file it points to)",
                path.display()
            ),
            Ok(meta) if !meta.file_type().is_file() => {
                anyhow::bail!("{} is not a regular file", path.display())
            }
            Ok(meta) if meta.len() > estuary_server::config::MAX_CONFIG_BYTES => anyhow::bail!(
                "{} is larger than {} bytes",
                path.display(),
                estuary_server::config::MAX_CONFIG_BYTES
            ),
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(e).with_context(|| path.display().to_string()),
        };
        let text = if existed {
            std::fs::read_to_string(path).with_context(|| path.display().to_string())?
        } else {
            ConfigFile::new_default(false).to_commented_toml()
        };
        // The typed reading names unknown keys and bad values; the document keeps the comments.
        let file: ConfigFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let original_error = file.resolve().err().map(|e| e.to_string());
        let doc = text
            .parse::<DocumentMut>()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(ConfigEdit {
            path: path.to_path_buf(),
            doc,
            existed,
            original_error,
            removed: Vec::new(),
        })
    }

    /// The `[[users]]` tables (created if missing).
    fn users(&mut self) -> anyhow::Result<&mut ArrayOfTables> {
        if !self.doc.contains_key("users") {
            self.doc
                .insert("users", Item::ArrayOfTables(ArrayOfTables::new()));
        }
        match self.doc.get_mut("users") {
            Some(Item::ArrayOfTables(users)) => Ok(users),
            _ => bail!(
                "{}: `users` is not written as [[users]] tables; edit it by hand",
                self.path.display()
            ),
        }
    }

    /// Sets the password hash of user `name`, adding the user if missing. Returns whether the
    /// user existed.
    pub fn set_user(&mut self, name: &str, password_hash: &str) -> anyhow::Result<bool> {
        let users = self.users()?;
        if let Some(user) = users
            .iter_mut()
            .find(|t| t.get("name").and_then(Item::as_str) == Some(name))
        {
            user["password_hash"] = value(password_hash);
            return Ok(true);
        }
        let mut user = Table::new();
        user["name"] = value(name);
        user["password_hash"] = value(password_hash);
        users.push(user);
        Ok(false)
    }

    /// Removes user `name`. Returns whether the user existed.
    pub fn remove_user(&mut self, name: &str) -> anyhow::Result<bool> {
        let users = self.users()?;
        let Some(index) = users
            .iter()
            .position(|t| t.get("name").and_then(Item::as_str) == Some(name))
        else {
            return Ok(false);
        };
        // The comment above the first [[users]] introduces them all: keep it on the next one.
        let prefix = users
            .get(index)
            .and_then(|t| t.decor().prefix())
            .and_then(|p| p.as_str())
            .map(str::to_owned);
        users.remove(index);
        if let (Some(prefix), Some(next)) = (prefix, users.get_mut(index)) {
            if index == 0 {
                next.decor_mut().set_prefix(prefix);
            }
        }
        self.removed.push(name.to_owned());
        Ok(true)
    }

    /// The user names, in file order.
    pub fn user_names(&self) -> Vec<String> {
        match self.doc.get("users") {
            Some(Item::ArrayOfTables(users)) => users
                .iter()
                .filter_map(|t| t.get("name").and_then(Item::as_str).map(str::to_owned))
                .collect(),
            _ => vec![],
        }
    }

    /// Adds the names of `sans` that `server_sans` lacks; returns those added.
    pub fn add_server_sans(&mut self, sans: &[String]) -> anyhow::Result<Vec<String>> {
        if !self.doc.contains_key("server_sans") {
            self.doc
                .insert("server_sans", value(toml_edit::Array::new()));
        }
        let path = self.path.display().to_string();
        let list = self
            .doc
            .get_mut("server_sans")
            .and_then(Item::as_array_mut)
            .ok_or_else(|| anyhow::anyhow!("{path}: server_sans is not a list"))?;
        let mut added = Vec::new();
        for san in sans {
            if !list.iter().any(|v| v.as_str() == Some(san.as_str())) {
                list.push(san.as_str());
                added.push(san.clone());
            }
        }
        Ok(added)
    }

    /// Sets `ca_key_uri` (the CA key in a PKCS#11 token).
    pub fn set_ca_key_uri(&mut self, uri: &str) {
        self.doc.insert("ca_key_uri", value(uri));
    }

    /// Checks the edited file (it must parse and resolve, as the server will read it) and
    /// writes it atomically, keeping the old file's owner and group read bit (mode 0600 or
    /// 0640; 0600 for a new file).
    pub fn save(&self) -> anyhow::Result<()> {
        let shown = self.path.display();
        let text = self.doc.to_string();
        let file: ConfigFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{shown} as edited: {e}"))?;
        if let Err(e) = file.resolve().map_err(|e| e.to_string()) {
            let caused_by_edit = self
                .removed
                .iter()
                .any(|name| e.contains(&format!("{name:?}")));
            match &self.original_error {
                Some(before) if !caused_by_edit => eprintln!(
                    "warning: {shown} is not valid yet: {e} (it was not valid before this change \
                     either: {before}); the server will not load it until that is fixed"
                ),
                _ => bail!("{shown} as edited: {e}"),
            }
        }
        let (owner, mode) = if self.existed {
            let meta = std::fs::symlink_metadata(&self.path).with_context(|| shown.to_string())?;
            if meta.file_type().is_symlink() {
                bail!(
                    "{shown} is a symbolic link: refusing to replace it; edit the file it points \
                     to by hand, or give its path with --config"
                );
            }
            if !meta.is_file() {
                bail!("{shown} is not a regular file");
            }
            // Group read may be intentional (root:estuary 0640); nothing more is kept.
            (
                Some((meta.uid(), meta.gid())),
                (meta.mode() & 0o040) | 0o600,
            )
        } else {
            (None, 0o600)
        };
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        }
        estuary_ca::bootstrap::write_atomic_owned(&self.path, text.as_bytes(), mode, owner)
            .map_err(|e| match owner {
                Some((uid, gid)) => anyhow::anyhow!(
                    "{e}; the file was left as it was (it must keep its owner, uid {uid} gid \
                     {gid}: run this command as that user, e.g. sudo -u estuary ..., or as root)"
                ),
                None => e.into(),
            })?;
        Ok(())
    }
}
