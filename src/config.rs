//! The command line as mount.fuse3 calls it (`sessfs SOURCE MOUNTPOINT -o OPTS`), its options,
//! and the store address with its secret kept out of sight.
//!
//! Every option sessfs does not know is an error naming it, except the generic ones that
//! mount(8), mount.fuse3 and systemd put on the line: a typo in fstab must not mount a
//! directory with a setting silently ignored.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::keys::{DEFAULT_PREFIX, Keys};

#[derive(Debug, Parser)]
#[command(
    name = "sessfs",
    version,
    about = "Mounts a directory whose PHP session files live in Redis",
    after_help = "Options (-o): ttl=SECONDS prefix=STRING cache_size=BYTES max_size=BYTES \
                  timeout=SECONDS lock_lease=SECONDS leases=on|off write=through|back allow_other allow_root default_permissions password_file=PATH \
                  log=LEVEL log_file=PATH dir_mode=OCTAL uid=N gid=N. See sessfs(8)."
)]
pub struct Cli {
    /// redis://[user[:password]@]host:port[/db]
    pub store_url: String,
    /// The directory to mount on (PHP's session.save_path).
    pub mountpoint: PathBuf,
    /// Mount options, comma-separated; may be given more than once.
    #[arg(short = 'o', value_name = "OPT[,OPT...]")]
    pub options: Vec<String>,
    /// Stay in the foreground (systemd, tests); otherwise return once the mount is live.
    #[arg(short = 'f')]
    pub foreground: bool,
}

/// Every option sessfs itself acts on, as `sessfs(8)` documents them. A test keeps this list,
/// the parser and the manual page in step.
pub const OWN_OPTIONS: &[&str] = &[
    "ttl",
    "prefix",
    "cache_size",
    "max_size",
    "timeout",
    "lock_lease",
    "leases",
    "write",
    "allow_other",
    "allow_root",
    "default_permissions",
    "password_file",
    "log",
    "log_file",
    "dir_mode",
    "uid",
    "gid",
];

/// Options mount(8), mount.fuse3 or systemd pass along that have no meaning for sessfs beyond
/// what the kernel does with the standard ones.
const GENERIC_OPTIONS: &[&str] = &[
    "rw",
    "ro",
    "suid",
    "nosuid",
    "dev",
    "nodev",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "lazytime",
    "nolazytime",
    "diratime",
    "nodiratime",
    "sync",
    "async",
    "dirsync",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "owner",
    "group",
    "defaults",
    "_netdev",
    "nofail",
    "auto_unmount",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountFlag {
    Ro,
    NoSuid,
    NoDev,
    NoExec,
    NoAtime,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub ttl: Duration,
    pub prefix: String,
    pub cache_size: usize,
    pub max_size: u64,
    pub timeout: Duration,
    pub lock_lease: Duration,
    /// Keep sessions (lock and content) on this server between requests until another asks.
    pub leases: bool,
    /// Under a lease, answer close(2) at once and send the session right after (`write=back`).
    pub write_back: bool,
    pub allow_other: bool,
    pub allow_root: bool,
    pub default_permissions: bool,
    pub password_file: Option<PathBuf>,
    pub log: String,
    pub log_file: Option<PathBuf>,
    pub dir_mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Standard flags handed to the kernel.
    pub flags: Vec<MountFlag>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            ttl: Duration::from_secs(1440),
            prefix: DEFAULT_PREFIX.to_string(),
            cache_size: 64 << 20,
            max_size: 4 << 20,
            timeout: Duration::from_secs(5),
            lock_lease: Duration::from_secs(5),
            leases: true,
            write_back: false,
            allow_other: false,
            allow_root: false,
            default_permissions: false,
            password_file: None,
            log: "info".into(),
            log_file: None,
            dir_mode: 0o1733,
            uid: 0,
            gid: 0,
            flags: Vec::new(),
        }
    }
}

/// `64M`, `4096`, `1g`: bytes with an optional binary suffix.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, shift) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 10),
        Some((i, 'm' | 'M')) => (&s[..i], 20),
        Some((i, 'g' | 'G')) => (&s[..i], 30),
        _ => (s, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a size (a number, optionally with K, M or G)"))?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_secs(key: &str, v: &str) -> Result<Duration, String> {
    let n: f64 = v
        .parse()
        .map_err(|_| format!("option {key}={v}: not a number of seconds"))?;
    if !(n > 0.0 && n < 1e9) {
        return Err(format!(
            "option {key}={v}: must be a positive number of seconds"
        ));
    }
    Ok(Duration::from_secs_f64(n))
}

fn parse_u32(key: &str, v: &str) -> Result<u32, String> {
    v.parse()
        .map_err(|_| format!("option {key}={v}: not a whole number"))
}

impl Options {
    /// Parses `-o` arguments (each a comma-separated list).
    pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Options, String> {
        let mut o = Options::default();
        for arg in args {
            for opt in arg.as_ref().split(',').filter(|s| !s.is_empty()) {
                o.apply(opt)?;
            }
        }
        Keys::new(&o.prefix).map_err(|e| format!("option prefix: {e}"))?;
        if o.max_size == 0 {
            return Err("option max_size: must be more than 0".into());
        }
        if o.allow_other && o.allow_root {
            return Err("options allow_other and allow_root exclude each other".into());
        }
        if o.write_back && !o.leases {
            // Write-back lives in the lease: it is what keeps the session's lock while the
            // write is on its way.
            return Err("option write=back needs leases=on".into());
        }
        Ok(o)
    }

    fn apply(&mut self, opt: &str) -> Result<(), String> {
        let (key, value) = match opt.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (opt, None),
        };
        let need = |v: Option<&str>| -> Result<String, String> {
            v.map(str::to_string)
                .ok_or_else(|| format!("option {key} needs a value ({key}=...)"))
        };
        match key {
            "ttl" => self.ttl = parse_secs(key, &need(value)?)?,
            "timeout" => self.timeout = parse_secs(key, &need(value)?)?,
            "lock_lease" => {
                self.lock_lease = parse_secs(key, &need(value)?)?;
                if self.lock_lease < Duration::from_millis(300) {
                    return Err(format!(
                        "option lock_lease={}: at least 0.3 seconds",
                        need(value)?
                    ));
                }
            }
            "leases" => {
                self.leases = match need(value)?.as_str() {
                    "on" => true,
                    "off" => false,
                    v => return Err(format!("option leases={v}: use on or off")),
                }
            }
            "write" => {
                self.write_back = match need(value)?.as_str() {
                    "through" => false,
                    "back" => true,
                    v => return Err(format!("option write={v}: use through or back")),
                }
            }
            "prefix" => self.prefix = need(value)?,
            "cache_size" => {
                let v = need(value)?;
                self.cache_size = usize::try_from(parse_bytes(&v)?)
                    .map_err(|_| format!("option cache_size={v}: too large"))?;
            }
            "max_size" => self.max_size = parse_bytes(&need(value)?)?,
            "allow_other" => self.allow_other = true,
            "allow_root" => self.allow_root = true,
            "default_permissions" => self.default_permissions = true,
            "password_file" => self.password_file = Some(PathBuf::from(need(value)?)),
            "log" => {
                let v = need(value)?;
                if !matches!(v.as_str(), "error" | "warn" | "info" | "debug" | "trace") {
                    return Err(format!(
                        "option log={v}: use error, warn, info, debug or trace"
                    ));
                }
                self.log = v;
            }
            "log_file" => self.log_file = Some(PathBuf::from(need(value)?)),
            "dir_mode" => {
                let v = need(value)?;
                self.dir_mode = u32::from_str_radix(&v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| format!("option dir_mode={v}: not an octal mode"))?;
            }
            "uid" => self.uid = parse_u32(key, &need(value)?)?,
            "gid" => self.gid = parse_u32(key, &need(value)?)?,
            "ro" => self.flags.push(MountFlag::Ro),
            "nosuid" => self.flags.push(MountFlag::NoSuid),
            "nodev" => self.flags.push(MountFlag::NoDev),
            "noexec" => self.flags.push(MountFlag::NoExec),
            "noatime" => self.flags.push(MountFlag::NoAtime),
            k if GENERIC_OPTIONS.contains(&k) => {}
            k if k.starts_with("x-") || k == "comment" || k == "fsname" || k == "subtype" => {}
            k => return Err(format!("unknown option {k:?} (see sessfs(8))")),
        }
        Ok(())
    }
}

/// A store address, its shown form never carrying the password.
#[derive(Clone)]
pub struct StoreUrl {
    full: String,
    shown: String,
    has_password: bool,
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<StoreUrl, String> {
        let shown = redact(url);
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(format!(
                "store URL {shown:?}: expected redis://[user:password@]host:port[/db]"
            ));
        };
        match scheme {
            "redis" => {}
            "rediss" => {
                return Err(format!(
                    "store URL {shown:?}: TLS (rediss://) is not supported yet"
                ));
            }
            _ => {
                return Err(format!(
                    "store URL {shown:?}: unknown scheme {scheme:?}, expected redis://"
                ));
            }
        }
        let authority = rest.split('/').next().unwrap_or("");
        let host = authority.rsplit('@').next().unwrap_or("");
        if host.is_empty() {
            return Err(format!("store URL {shown:?}: no host"));
        }
        let has_password = authority
            .rsplit_once('@')
            .is_some_and(|(user, _)| user.contains(':'));
        redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| format!("store URL {shown:?}: {}", redact(&e.to_string())))?;
        Ok(StoreUrl {
            full: url.to_string(),
            shown,
            has_password,
        })
    }

    /// The address as logs, /proc/mounts and error messages show it.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The address with its password, for the connection only.
    pub fn secret(&self) -> &str {
        &self.full
    }

    pub fn has_password(&self) -> bool {
        self.has_password
    }

    /// Connection settings, with the password from `password_file` if one was given.
    pub fn connection_info(&self, password: Option<&str>) -> Result<redis::ConnectionInfo, String> {
        let info = redis::IntoConnectionInfo::into_connection_info(self.full.as_str())
            .map_err(|e| format!("store URL {}: {}", self.shown, redact(&e.to_string())))?;
        Ok(match password {
            Some(p) => {
                let settings = info.redis_settings().clone().set_password(p);
                info.set_redis_settings(settings)
            }
            None => info,
        })
    }
}

/// Removes the password from anything that looks like `scheme://user:password@host`.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) => {
                let user = userinfo.split(':').next().unwrap_or("");
                if !user.is_empty() {
                    out.push_str(user);
                    out.push('@');
                }
                out.push_str(host);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// Reads a password file: the first line, without its line end.
pub fn read_password_file(path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("password_file {}: {e}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(format!("password_file {}: is empty", path.display()));
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_php_and_debian() {
        let o = Options::parse::<&str>(&[]).unwrap();
        assert_eq!(o.ttl, Duration::from_secs(1440));
        assert_eq!(o.prefix, "PHPREDIS_SESSION:");
        assert_eq!(o.dir_mode, 0o1733);
        assert_eq!(o.max_size, 4 << 20);
    }

    #[test]
    fn own_and_generic_options_parse() {
        let o = Options::parse(&[
            "rw,nosuid,nodev,_netdev,x-systemd.requires=redis.service,ttl=60,prefix=app:",
            "cache_size=1M,max_size=8K,allow_other,default_permissions,log=debug,dir_mode=0770",
        ])
        .unwrap();
        assert_eq!(o.ttl, Duration::from_secs(60));
        assert_eq!(o.prefix, "app:");
        assert_eq!(o.cache_size, 1 << 20);
        assert_eq!(o.max_size, 8 << 10);
        assert!(o.allow_other && o.default_permissions);
        assert_eq!(o.dir_mode, 0o770);
        assert_eq!(o.flags, vec![MountFlag::NoSuid, MountFlag::NoDev]);
    }

    #[test]
    fn unknown_and_malformed_options_are_named() {
        let e = Options::parse(&["ttl=60,tll=5"]).unwrap_err();
        assert!(e.contains("\"tll\""), "{e}");
        let e = Options::parse(&["ttl=abc"]).unwrap_err();
        assert!(e.contains("ttl=abc"), "{e}");
        let e = Options::parse(&["ttl"]).unwrap_err();
        assert!(e.contains("needs a value"), "{e}");
        let e = Options::parse(&["prefix={x}"]).unwrap_err();
        assert!(e.contains("prefix"), "{e}");
        let e = Options::parse(&["log=loud"]).unwrap_err();
        assert!(e.contains("log=loud"), "{e}");
        let e = Options::parse(&["write=later"]).unwrap_err();
        assert!(e.contains("write=later"), "{e}");
        let e = Options::parse(&["write=back,leases=off"]).unwrap_err();
        assert!(e.contains("needs leases=on"), "{e}");
        assert!(Options::parse(&["write=back"]).unwrap().write_back);
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("redis://u:s3cret@127.0.0.1:6379/2"),
            "redis://u@127.0.0.1:6379/2"
        );
        assert_eq!(redact("redis://:s3cret@h:1"), "redis://h:1");
        assert_eq!(
            redact("failed for redis://:p@h:1/0 and more"),
            "failed for redis://h:1/0 and more"
        );
        let u = StoreUrl::parse("redis://:s3cret@127.0.0.1:6379/0").unwrap();
        assert!(u.has_password());
        assert!(!format!("{u:?}").contains("s3cret"));
        assert!(!u.shown().contains("s3cret"));
    }

    #[test]
    fn bad_urls_are_refused_without_the_password() {
        let e = StoreUrl::parse("http://:pw@h:1").unwrap_err();
        assert!(e.contains("scheme") && !e.contains("pw@"), "{e}");
        assert!(StoreUrl::parse("rediss://h:1").unwrap_err().contains("TLS"));
        assert!(StoreUrl::parse("127.0.0.1:6379").is_err());
        assert!(StoreUrl::parse("redis://").is_err());
    }

    #[test]
    fn sizes_take_suffixes() {
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("1g"), Ok(1 << 30));
        assert!(parse_bytes("x").is_err());
        assert!(parse_bytes("99999999999G").is_err());
    }
}
