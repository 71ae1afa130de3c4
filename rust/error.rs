//! Plain Rust errors. Each message names the bad value, the limit and the fix.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// An input is larger than a documented cap.
    TooLarge {
        what: String,
        size: usize,
        limit: usize,
        fix: String,
    },
    /// An I/O error with the path it concerns.
    Io {
        path: String,
        source: std::io::Error,
    },
    /// Anything else, already phrased for the user.
    Msg(String),
    /// A file is damaged at `offset` (a checksum or framing error that is not
    /// a torn tail left by a crash).
    Corrupt {
        path: String,
        offset: u64,
        detail: String,
        fix: String,
    },
    /// Another process holds a writer lock; `holder` says who (pid, host).
    Locked {
        path: String,
        holder: String,
        fix: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooLarge {
                what,
                size,
                limit,
                fix,
            } => {
                write!(
                    f,
                    "{what} is {size} bytes, over the limit of {limit}; {fix}"
                )
            }
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Msg(m) => f.write_str(m),
            Error::Corrupt {
                path,
                offset,
                detail,
                fix,
            } => {
                write!(
                    f,
                    "{path} is corrupt at byte offset {offset}: {detail}; {fix}"
                )
            }
            Error::Locked { path, holder, fix } => {
                write!(f, "{path} is locked by another writer ({holder}); {fix}")
            }
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
