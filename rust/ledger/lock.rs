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
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Once;

use crate::error::{Error, Result};

/// The lock file's name inside a ledger directory.
pub const LOCK_FILE: &str = "LOCK";

pub struct WriterLock {
    _file: File,
    slot: Option<usize>,
}

// A forked child inherits the lock's file descriptor, and with it the lock:
// a worker pool forked while a ledger is open would keep the ledger locked
// after its parent dies. The child half of a pthread_atfork handler closes
// the inherited descriptors (close(2) is async-signal-safe; the slots are
// plain atomics, so the handler takes no lock). The parent's lock stays.
const SLOTS: usize = 64;
static LOCK_FDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(-1) }; SLOTS];
static ATFORK: Once = Once::new();

extern "C" fn close_inherited_locks() {
    for slot in &LOCK_FDS {
        let fd = slot.swap(-1, Ordering::SeqCst);
        if fd >= 0 {
            // SAFETY: fd was a lock descriptor of the parent, inherited by this child.
            unsafe { libc::close(fd) };
        }
    }
}

fn register_for_fork(fd: i32) -> Option<usize> {
    ATFORK.call_once(|| {
        // SAFETY: registering a handler that only calls close(2).
        unsafe { libc::pthread_atfork(None, None, Some(close_inherited_locks)) };
    });
    LOCK_FDS.iter().position(|s| {
        s.compare_exchange(-1, fd, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    })
}

impl Drop for WriterLock {
    fn drop(&mut self) {
        if let Some(i) = self.slot {
            LOCK_FDS[i].store(-1, Ordering::SeqCst);
        }
        // `_file` closes after this, releasing the lock
    }
}

/// Whether process `pid` exists (on this host).
fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe {
        libc::kill(pid, 0) == 0
            || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
    }
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
        let path = dir.join(LOCK_FILE);
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
            let mut holder = read_holder(&mut file);
            let pid = holder
                .strip_prefix("pid ")
                .and_then(|r| r.split(' ').next())
                .and_then(|p| p.parse::<i32>().ok());
            let same_host = holder.contains(&format!(" on host {} ", hostname()));
            if let (Some(pid), true) = (pid, same_host) {
                if !pid_alive(pid) {
                    holder.push_str(&format!(
                        "; pid {pid} has exited, so a process it started still holds the lock: stop leftover worker processes"
                    ));
                }
            }
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
        let slot = register_for_fork(file.as_raw_fd());
        Ok(WriterLock { _file: file, slot })
    }

    /// Whether some process holds the writer lock right now (readers use
    /// this to tell a write in flight from a torn tail).
    pub fn writer_active(dir: &Path) -> Result<bool> {
        let path = dir.join(LOCK_FILE);
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
