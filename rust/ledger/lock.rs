//! One writer at a time: an advisory `flock` on `<ledger>/LOCK`.
//!
//! `flock` locks belong to the open file description, so the kernel drops
//! them when the holder exits, however it exits (SIGKILL included): a lock
//! can never go stale. The holder writes its pid and host into the file so
//! that a refused writer can say who holds it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{Error, Result};

pub struct WriterLock {
    _file: File,
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source: e,
    }
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

fn try_flock(file: &File, op: libc::c_int) -> std::io::Result<bool> {
    loop {
        // SAFETY: the fd is open for the lifetime of `file`.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(true);
        }
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EWOULDBLOCK) => return Ok(false),
            Some(libc::EINTR) => continue,
            _ => return Err(e),
        }
    }
}

fn read_holder(file: &mut File) -> String {
    let mut s = String::new();
    let _ = file.seek(SeekFrom::Start(0));
    let _ = file.read_to_string(&mut s);
    let s = s.trim();
    if s.is_empty() {
        "holder unknown: it has not written its pid yet".into()
    } else {
        s.to_string()
    }
}

impl WriterLock {
    /// Take the writer lock of the ledger at `dir`, or say who holds it.
    pub fn acquire(dir: &Path) -> Result<WriterLock> {
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        // A reader probing with a shared lock holds it for microseconds: retry
        // briefly so that such a probe never refuses a writer.
        let mut got = false;
        for attempt in 0..20 {
            if try_flock(&file, libc::LOCK_EX).map_err(|e| io_err(&path, e))? {
                got = true;
                break;
            }
            if attempt < 19 {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
        if !got {
            let holder = read_holder(&mut file);
            return Err(Error::Locked {
                path: dir.display().to_string(),
                holder,
                fix: "only one writer at a time: wait for it to finish, or open with readonly=True"
                    .into(),
            });
        }
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let info = format!(
            "pid {} on host {} (since unix time {since})\n",
            std::process::id(),
            hostname()
        );
        file.set_len(0).map_err(|e| io_err(&path, e))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| io_err(&path, e))?;
        file.write_all(info.as_bytes())
            .map_err(|e| io_err(&path, e))?;
        Ok(WriterLock { _file: file })
    }

    /// Whether some process holds the writer lock right now (readers use
    /// this to tell a write in flight from a torn tail).
    pub fn writer_active(dir: &Path) -> Result<bool> {
        let path = dir.join("LOCK");
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&path, e)),
        };
        let got = try_flock(&file, libc::LOCK_SH).map_err(|e| io_err(&path, e))?;
        // Dropping `file` releases the shared lock if we got it.
        Ok(!got)
    }
}
