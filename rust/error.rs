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

/// Lock `m`, refusing a mutex that a panic poisoned: the state behind it may
/// be half-updated, so the caller is told to reopen (for the ledger, opening
/// rescans the files and recovers every durable record) instead of carrying on.
pub fn lock_unpoisoned<'a, T>(
    m: &'a std::sync::Mutex<T>,
    what: &str,
) -> Result<std::sync::MutexGuard<'a, T>> {
    m.lock().map_err(|_| {
        Error::Msg(format!(
            "{what}: an earlier call failed with an internal error, so its in-memory state \
             may be inconsistent and it refuses further calls; close it and open it again \
             (opening rescans the files and recovers everything already written)"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn a_poisoned_lock_is_refused_with_the_fix() {
        let m = Arc::new(Mutex::new(1));
        assert_eq!(*lock_unpoisoned(&m, "ledger x").unwrap(), 1);
        let m2 = Arc::clone(&m);
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("boom");
        })
        .join();
        let err = lock_unpoisoned(&m, "ledger x").err().unwrap().to_string();
        assert!(err.starts_with("ledger x: an earlier call failed"), "{err}");
        assert!(err.contains("open it again"), "{err}");
    }
}
