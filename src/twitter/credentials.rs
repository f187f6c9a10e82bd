//! API keys and tokens: from the environment or from a TOML file only its owner can read.
//!
//! ```toml
//! [app]                      # the X app's consumer key and secret
//! consumer_key = "..."
//! consumer_secret = "..."
//! [bots.NAME]                # one account per bot, written by `aviary auth NAME`
//! access_token = "..."
//! access_secret = "..."
//! user_id = "..."            # the account's id and handle
//! username = "..."
//! ```
//!
//! `AVIARY_X_CONSUMER_KEY` / `AVIARY_X_CONSUMER_SECRET` override the app keys, and
//! `AVIARY_X_ACCESS_TOKEN_<BOT>` / `AVIARY_X_ACCESS_SECRET_<BOT>` a bot's tokens (`<BOT>` in
//! upper case, anything but letters and digits as `_`): per bot, so one account's tokens
//! cannot post another bot's tweets. Every secret is a [`Secret`], which never prints.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A key, token or secret: printing it (`{}` or `{:?}`) shows `***`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The value itself, for signing requests only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The X app's consumer key pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppKeys {
    /// API key.
    pub consumer_key: Secret,
    /// API key secret.
    pub consumer_secret: Secret,
}

/// One account's access token pair, and who it is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountKeys {
    /// Access token.
    pub access_token: Secret,
    /// Access token secret.
    pub access_secret: Secret,
    /// The account's numeric id, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The account's handle, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
}

/// Everything signing a request for one bot takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BotKeys {
    /// The app.
    pub app: AppKeys,
    /// The bot's account.
    pub account: AccountKeys,
}

/// The credentials file's contents (plus the environment's overrides once loaded). Unknown
/// sections and keys are refused: a `[bot.NAME]` typo must not quietly make a bot a dry run.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The app's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<AppKeys>,
    /// Per bot name.
    #[serde(default)]
    pub bots: BTreeMap<String, AccountKeys>,
    /// Tokens from `AVIARY_X_ACCESS_TOKEN_<BOT>` variables, by suffix; never saved.
    #[serde(skip)]
    env_bots: Vec<(String, AccountKeys)>,
}

impl Credentials {
    /// Reads `path` (absent: no credentials) and applies the environment's overrides.
    /// Refuses a file that others can read or write.
    pub fn load(path: &Path) -> Result<Credentials> {
        let mut c = Credentials::read_file(path)?;
        c.apply_env();
        Ok(c)
    }

    /// The file alone.
    pub fn read_file(path: &Path) -> Result<Credentials> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Credentials::default()),
            Err(e) => return Err(Error::io(path, e)),
        };
        check_private(path)?;
        // toml's full messages quote the offending line, which may hold a secret: name the
        // place, and say what is wrong only where that names keys, never values.
        toml::from_str(&text).map_err(|e| {
            let at = e
                .span()
                .map(|s| format!(" at line {}", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_default();
            let message = e.message();
            let what =
                if message.starts_with("unknown field") || message.starts_with("missing field") {
                    format!(": {message}")
                } else {
                    String::new()
                };
            Error::invalid(
                format!("credentials file {} is not valid{at}{what}", path.display()),
                "it takes [app] consumer_key, consumer_secret and [bots.NAME] access_token, \
                 access_secret, user_id, username (see docs/posting.md)",
            )
        })
    }

    fn apply_env(&mut self) {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        if let (Some(k), Some(s)) = (
            var("AVIARY_X_CONSUMER_KEY"),
            var("AVIARY_X_CONSUMER_SECRET"),
        ) {
            self.app = Some(AppKeys {
                consumer_key: Secret(k),
                consumer_secret: Secret(s),
            });
        }
        let names: Vec<String> = std::env::vars()
            .filter_map(|(k, _)| k.strip_prefix("AVIARY_X_ACCESS_TOKEN_").map(str::to_string))
            .collect();
        for suffix in names {
            let (Some(t), Some(s)) = (
                var(&format!("AVIARY_X_ACCESS_TOKEN_{suffix}")),
                var(&format!("AVIARY_X_ACCESS_SECRET_{suffix}")),
            ) else {
                continue;
            };
            let keys = AccountKeys {
                access_token: Secret(t),
                access_secret: Secret(s),
                user_id: None,
                username: None,
            };
            self.env_bots.push((suffix, keys));
        }
    }

    /// The keys to post as bot `bot`, if there are any.
    pub fn for_bot(&self, bot: &str) -> Option<BotKeys> {
        let app = self.app.clone()?;
        let account = self
            .env_account(bot)
            .or_else(|| self.bots.get(bot).cloned())?;
        Some(BotKeys { app, account })
    }

    fn env_account(&self, bot: &str) -> Option<AccountKeys> {
        let suffix = env_suffix(bot);
        let mut found = self
            .env_bots
            .iter()
            .find(|(s, _)| *s == suffix)
            .map(|(_, k)| k.clone())?;
        // The id and handle `aviary auth` learnt still apply if the file has them.
        if let Some(f) = self.bots.get(bot) {
            if f.access_token == found.access_token {
                found.user_id.clone_from(&f.user_id);
                found.username.clone_from(&f.username);
            }
        }
        Some(found)
    }

    /// Writes `self` (without the environment's values) to `path` with mode 0600, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(self).map_err(|e| {
            Error::invalid(format!("cannot write credentials: {e}"), "please report it")
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let tmp = path.with_extension("toml.tmp");
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        let mut f = opts.open(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }
}

/// The environment variable suffix for bot `bot`.
pub fn env_suffix(bot: &str) -> String {
    bot.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Refuses a credentials file that anyone but its owner can read or write.
fn check_private(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Error::invalid(
                format!(
                    "credentials file {} has mode {:04o}: others can read it, so aviary will not use it",
                    path.display(),
                    mode & 0o7777
                ),
                format!("run `chmod 600 {}`", path.display()),
            ));
        }
    }
    Ok(())
}

/// Where the credentials file is: `AVIARY_CREDENTIALS`, else `credentials.toml` in the aviary
/// home when one was given (`--home`), else in the platform's config directory.
pub fn default_path(explicit_home: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("AVIARY_CREDENTIALS") {
        return Ok(PathBuf::from(p));
    }
    if let Some(h) = explicit_home {
        return Ok(h.join("credentials.toml"));
    }
    directories::ProjectDirs::from("", "", "aviary")
        .map(|d| d.config_dir().join("credentials.toml"))
        .ok_or_else(|| {
            Error::invalid(
                "cannot find a config directory for aviary's credentials",
                "set AVIARY_CREDENTIALS to the file's path",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let k = AppKeys {
            consumer_key: Secret::new("ck-very-secret"),
            consumer_secret: Secret::new("cs-very-secret"),
        };
        let shown = format!("{k:?} {}", k.consumer_key);
        assert!(!shown.contains("very-secret"), "{shown}");
    }

    #[test]
    fn env_suffix_is_upper_case_alphanumeric() {
        assert_eq!(env_suffix("my-bot.2"), "MY_BOT_2");
    }

    #[cfg(unix)]
    #[test]
    fn a_readable_file_is_refused_and_a_saved_one_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.toml");
        let c = Credentials {
            app: Some(AppKeys {
                consumer_key: Secret::new("k"),
                consumer_secret: Secret::new("s"),
            }),
            ..Default::default()
        };
        c.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(Credentials::read_file(&path).unwrap().app.is_some());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Credentials::read_file(&path).unwrap_err().to_string();
        assert!(err.contains("0644") && err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_bad_file_is_named_without_quoting_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.toml");
        std::fs::write(&path, "[app]\nconsumer_key = \"leaky-secret\nx").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let err = Credentials::read_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("credentials.toml") && !err.contains("leaky"),
            "{err}"
        );
    }

    #[test]
    fn a_misspelt_section_or_key_is_refused_with_its_line_and_the_valid_names() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.toml");
        let write = |text: &str| {
            std::fs::write(&path, text).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
            }
        };
        // `[bot.b1]` for `[bots.b1]`: the bot would silently be a dry run.
        write("[app]\nconsumer_key = \"k\"\nconsumer_secret = \"s\"\n\n[bot.b1]\naccess_token = \"tok-secret\"\naccess_secret = \"x\"\n");
        let err = Credentials::read_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("credentials.toml")
                && err.contains("line 5")
                && err.contains("unknown field `bot`")
                && err.contains("`bots`")
                && !err.contains("tok-secret"),
            "{err}"
        );
        write("[bots.b1]\naccess_token = \"t\"\naccess_secret = \"x\"\nuserid = \"1\"\n");
        let err = Credentials::read_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("line 4")
                && err.contains("unknown field `userid`")
                && err.contains("user_id"),
            "{err}"
        );
    }
}
