//! Changes to the config file made by commands (`user add`, `user remove`, `serve --san`):
//! edited in place with `toml_edit`, so the operator's comments, order and formatting stay.
//! The edited text is checked as a whole (parse and resolve) before it replaces the file, and
//! the file keeps its owner (a root shell editing the service user's file must not leave a
//! file the service cannot read).

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
}

impl ConfigEdit {
    /// Opens `path`, or the commented defaults of a new installation if it does not exist.
    pub fn open(path: &Path) -> anyhow::Result<Self> {
        let existed = path.exists();
        let text = if existed {
            std::fs::read_to_string(path).with_context(|| path.display().to_string())?
        } else {
            ConfigFile::new_default(false).to_commented_toml()
        };
        // The typed reading names unknown keys and bad values; the document keeps the comments.
        let _: ConfigFile =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        let doc = text
            .parse::<DocumentMut>()
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        Ok(ConfigEdit {
            path: path.to_path_buf(),
            doc,
            existed,
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

    /// Checks the edited file (it must parse and resolve, as the server will read it) and
    /// writes it atomically, mode 0600, keeping the old file's owner.
    pub fn save(&self) -> anyhow::Result<()> {
        let text = self.doc.to_string();
        let file: ConfigFile = toml::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{} as edited: {e}", self.path.display()))?;
        file.resolve()
            .map_err(|e| anyhow::anyhow!("{} as edited: {e}", self.path.display()))?;
        let owner = if self.existed {
            std::fs::metadata(&self.path)
                .ok()
                .map(|m| (m.uid(), m.gid()))
        } else {
            None
        };
        if let Some(dir) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        }
        estuary_ca::bootstrap::write_atomic(&self.path, text.as_bytes(), 0o600)?;
        if let Some((uid, gid)) = owner {
            let now =
                std::fs::metadata(&self.path).with_context(|| self.path.display().to_string())?;
            if (now.uid(), now.gid()) != (uid, gid) {
                if let Err(e) = std::os::unix::fs::chown(&self.path, Some(uid), Some(gid)) {
                    eprintln!(
                        "warning: {}: could not give the file back to its owner (uid {uid}, gid {gid}): {e}; \
                         run this command as that user (e.g. sudo -u estuary ...)",
                        self.path.display()
                    );
                }
            }
        }
        Ok(())
    }
}
