//! The Redis key layout, in one place.
//!
//! A session file `sess_<id>` is stored under the same key phpredis uses for session `<id>`,
//! `<prefix><id>`, holding the raw session bytes, so a server on `save_handler = redis` with the
//! same prefix reads and writes the same sessions. Everything sessfs needs beside the bytes
//! (owner, mode, times, version) lives in a hash `{<prefix><id>}:meta`: the braces make Redis
//! Cluster hash only `<prefix><id>`, so both keys (and the lock keys of later issues) sit in the
//! slot of the data key and one script can touch them all.
//!
//! Files whose names do not start with `sess_` (Laravel names its files by the bare id) are kept
//! apart from PHP's ids by a `~`, which no PHP session id contains: file `N` is key `<prefix>~N`.

use std::fmt;

/// Longest file name the kernel passes to a filesystem (NAME_MAX).
pub const NAME_MAX: usize = 255;

const SESS: &str = "sess_";

/// Why a file name cannot be a session file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("name is longer than {NAME_MAX} bytes")]
    TooLong,
    #[error("name is empty, starts with '.', or has a character outside [A-Za-z0-9,._-]")]
    Invalid,
}

/// A validated file name of the session directory, and the part of its Redis key after the
/// prefix (`id`). Built only through [`SessionName::parse`] or [`Keys::name_of_key`], so every
/// value is a name the directory can hold.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionName {
    file: String,
}

fn is_php_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b',' || b == b'-'
}

fn is_portable_char(b: u8) -> bool {
    is_php_id_char(b) || b == b'.' || b == b'_'
}

impl SessionName {
    /// Checks a file name: `sess_` followed by a PHP session id (`[A-Za-z0-9,-]+`), or any other
    /// name of portable characters that does not start with a dot or with `sess_`.
    pub fn parse(name: &[u8]) -> Result<SessionName, NameError> {
        if name.len() > NAME_MAX {
            return Err(NameError::TooLong);
        }
        if name.is_empty() || name[0] == b'.' || !name.iter().all(|&b| is_portable_char(b)) {
            return Err(NameError::Invalid);
        }
        if let Some(id) = name.strip_prefix(SESS.as_bytes())
            && (id.is_empty() || !id.iter().all(|&b| is_php_id_char(b)))
        {
            return Err(NameError::Invalid);
        }
        // Every byte is ASCII, checked above.
        let file = String::from_utf8_lossy(name).into_owned();
        Ok(SessionName { file })
    }

    /// The file name as the directory shows it.
    pub fn as_str(&self) -> &str {
        &self.file
    }

    /// The PHP session id, for `sess_<id>` names.
    pub fn php_id(&self) -> Option<&str> {
        self.file.strip_prefix(SESS)
    }

    /// What follows the prefix in the data key.
    fn key_suffix(&self) -> String {
        match self.php_id() {
            Some(id) => id.to_string(),
            None => format!("~{}", self.file),
        }
    }
}

impl fmt::Debug for SessionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)
    }
}

impl fmt::Display for SessionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.file)
    }
}

/// The keys of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// Raw session bytes, phpredis-compatible.
    pub data: String,
    /// sessfs' metadata hash, in the data key's hash slot.
    pub meta: String,
    /// The cluster lock: holders and queued servers, in the same slot.
    pub lock: String,
}

/// Builds and parses keys for one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// phpredis' default `session.save_path` prefix, so a mixed fleet works without configuration.
pub const DEFAULT_PREFIX: &str = "PHPREDIS_SESSION:";

impl Keys {
    /// A prefix may not contain braces (they would change the hash slot of every key) nor
    /// whitespace or control characters (they would break log lines and `redis-cli` use).
    pub fn new(prefix: &str) -> Result<Keys, String> {
        if prefix
            .bytes()
            .any(|b| b == b'{' || b == b'}' || b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(format!(
                "prefix {prefix:?} may not contain braces, spaces or control characters"
            ));
        }
        Ok(Keys {
            prefix: prefix.to_string(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn of(&self, name: &SessionName) -> SessionKeys {
        let data = format!("{}{}", self.prefix, name.key_suffix());
        let meta = format!("{{{data}}}:meta");
        let lock = format!("{{{data}}}:lock");
        SessionKeys { data, meta, lock }
    }

    /// The `SCAN MATCH` pattern for every data key: the prefix with glob characters escaped.
    pub fn scan_pattern(&self) -> String {
        let mut p = String::with_capacity(self.prefix.len() + 1);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                p.push('\\');
            }
            p.push(c);
        }
        p.push('*');
        p
    }

    /// The file a key found by SCAN stands for; None for keys that are not session data
    /// (phpredis' `<id>_LOCK` keys, anything else a user put under the prefix).
    pub fn name_of_key(&self, key: &[u8]) -> Option<SessionName> {
        let suffix = key.strip_prefix(self.prefix.as_bytes())?;
        if let Some(bare) = suffix.strip_prefix(b"~") {
            let name = SessionName::parse(bare).ok()?;
            return name.php_id().is_none().then_some(name);
        }
        if suffix.is_empty() || !suffix.iter().all(|&b| is_php_id_char(b)) {
            return None;
        }
        let mut file = Vec::with_capacity(SESS.len() + suffix.len());
        file.extend_from_slice(SESS.as_bytes());
        file.extend_from_slice(suffix);
        SessionName::parse(&file).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> SessionName {
        SessionName::parse(s.as_bytes()).expect("valid name")
    }

    #[test]
    fn php_names_map_to_phpredis_keys() {
        let k = Keys::new(DEFAULT_PREFIX).unwrap();
        let keys = k.of(&name("sess_abc123"));
        assert_eq!(keys.data, "PHPREDIS_SESSION:abc123");
        assert_eq!(keys.meta, "{PHPREDIS_SESSION:abc123}:meta");
        assert_eq!(keys.lock, "{PHPREDIS_SESSION:abc123}:lock");
    }

    #[test]
    fn bare_names_do_not_collide_with_php_ids() {
        let k = Keys::new("p:").unwrap();
        assert_eq!(k.of(&name("abc")).data, "p:~abc");
        assert_ne!(k.of(&name("abc")).data, k.of(&name("sess_abc")).data);
    }

    #[test]
    fn keys_round_trip_through_scan_names() {
        let k = Keys::new("p:").unwrap();
        for n in ["sess_abc", "sess_a-b,c", "laravelid40", "x.y_z"] {
            let key = k.of(&name(n)).data;
            assert_eq!(k.name_of_key(key.as_bytes()), Some(name(n)), "{n}");
        }
    }

    #[test]
    fn foreign_keys_are_not_files() {
        let k = Keys::new("p:").unwrap();
        assert_eq!(k.name_of_key(b"p:abc_LOCK"), None);
        assert_eq!(k.name_of_key(b"p:"), None);
        assert_eq!(k.name_of_key(b"q:abc"), None);
        assert_eq!(k.name_of_key(b"p:~sess_abc"), None);
        assert_eq!(k.name_of_key(b"p:a b"), None);
    }

    #[test]
    fn bad_names_are_refused() {
        assert_eq!(SessionName::parse(b""), Err(NameError::Invalid));
        assert_eq!(SessionName::parse(b".hidden"), Err(NameError::Invalid));
        assert_eq!(SessionName::parse(b"sess_"), Err(NameError::Invalid));
        assert_eq!(SessionName::parse(b"sess_a.b"), Err(NameError::Invalid));
        assert_eq!(SessionName::parse(b"a b"), Err(NameError::Invalid));
        assert_eq!(SessionName::parse("é".as_bytes()), Err(NameError::Invalid));
        assert_eq!(SessionName::parse(&[b'a'; 256]), Err(NameError::TooLong));
        assert!(SessionName::parse(&[b'a'; 255]).is_ok());
    }

    #[test]
    fn prefix_with_braces_is_refused_and_globs_are_escaped() {
        assert!(Keys::new("a{b}").is_err());
        assert_eq!(Keys::new("a*b:").unwrap().scan_pattern(), "a\\*b:*");
    }
}
