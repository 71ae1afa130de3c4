//! Plain Rust errors. Each message names the bad value, the limit and the fix.

use std::fmt;

#[derive(Debug)]
pub enum Error {
    /// An input is larger than a documented cap.
    TooLarge { what: String, size: usize, limit: usize, fix: String },
    /// An I/O error with the path it concerns.
    Io { path: String, source: std::io::Error },
    /// Anything else, already phrased for the user.
    Msg(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::TooLarge { what, size, limit, fix } => {
                write!(f, "{what} is {size} bytes, over the limit of {limit}; {fix}")
            }
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Msg(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
