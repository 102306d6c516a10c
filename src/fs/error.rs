//! The one error type `fs` returns: an errno decided where the cause is known, a message that
//! names the file and the cause, and how loudly the FUSE edge should log it.

use std::fmt;

use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Expected in normal operation (ENOENT from a lookup): not worth a line at info.
    Debug,
    /// The caller did something the directory refuses (a bad name, an unsupported operation).
    Warn,
    /// Data could not be read or written: a user may have lost a session.
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub errno: i32,
    pub message: String,
    pub level: Level,
}

impl Error {
    pub fn new(errno: i32, level: Level, message: impl Into<String>) -> Error {
        Error {
            errno,
            message: message.into(),
            level,
        }
    }

    /// A store failure while working on `what` (usually a file name).
    pub fn store(what: &dyn fmt::Display, err: StoreError) -> Error {
        Error::new(libc::EIO, Level::Error, format!("{what}: {err}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({})",
            self.message,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

/// `err!(ENOENT, Debug, "sess_x: no such session")`
macro_rules! err {
    ($errno:ident, $level:ident, $($fmt:tt)+) => {
        $crate::fs::error::Error::new(libc::$errno, $crate::fs::error::Level::$level, format!($($fmt)+))
    };
}
pub(crate) use err;
