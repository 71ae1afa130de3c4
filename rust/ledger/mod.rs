//! The tier ledger: append-only journal, recovery, tier assignment, statistics, merge.
//!
//! A ledger is a directory holding a `LOCK` file and append-only segment
//! files (format in [`format`]). Every mutating call is one group commit:
//! its frames and a sealing COMMIT frame go out in one write followed by
//! one `fdatasync`, so a call is durable when it returns and a crash leaves
//! either the whole call or none of it. The in-memory [`index::Index`]
//! keeps problems, stage bits and correct attempts; texts and arrays stay on
//! disk and are read back by location.
//!
//! Recovery on open (every frame's CRC is checked):
//! - a *torn tail* in the last segment (a frame cut short, or zero blocks the
//!   kernel never wrote, with nothing valid after it) is what a crash leaves
//!   behind: a writer cuts it back to the last COMMIT and warns with the bytes
//!   and records dropped; a reader ignores it (silently while a writer holds
//!   the lock, since that is simply a write in flight);
//! - anything else (a whole frame with a bad checksum, valid frames after a
//!   bad one, a missing segment) is corruption: an error naming the file and
//!   byte offset, unless `repair`, which keeps everything up to the last whole
//!   commit before it and moves the rest aside to `*.quarantine*` files.
//!
//! Concurrency: one writer, enforced by `flock` on `LOCK` (see `lock`);
//! any number of readers, which never write and see the committed prefix
//! as of their open.

pub mod crc;
pub mod format;
pub mod index;
mod lock;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use format::*;
use index::{AttemptFacts, Index, Selection, StageCounts, NONE, N_STAGES, STAGE_NAMES};

pub use index::{stage_code, tier_name};
pub use lock::hostname;

/// Default size at which a writer starts a new segment file.
pub const DEFAULT_SEGMENT_BYTES: u64 = 256 << 20;

/// How to open a ledger.
#[derive(Clone, Debug)]
pub struct OpenOptions2 {
    pub create: bool,
    pub readonly: bool,
    pub repair: bool,
    /// Roll over to a new segment file past this size.
    pub segment_bytes: u64,
}

impl Default for OpenOptions2 {
    fn default() -> Self {
        OpenOptions2 {
            create: true,
            readonly: false,
            repair: false,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

/// One attempt to record; arrays are little-endian bytes (u32 token ids,
/// float32 log-probs) exactly as they will be stored.
#[derive(Clone, Copy, Debug)]
pub struct AttemptIn<'a> {
    pub problem_id: &'a str,
    pub stage: u8,
    pub sample_index: u32,
    pub correct: bool,
    pub text: &'a str,
    pub reason: &'a str,
    pub token_ids: &'a [u8],
    pub behavior: &'a [u8],
    pub base: Option<&'a [u8]>,
}

/// Attempts read back, column by column (offsets have n + 1 entries;
/// array offsets count elements, text offsets count bytes).
#[derive(Default, Debug, Clone, PartialEq)]
pub struct Columns {
    pub problem: Vec<u32>,
    pub stage: Vec<u8>,
    pub sample: Vec<u32>,
    pub correct: Vec<u8>,
    pub has_base: Vec<u8>,
    pub text: Vec<u8>,
    pub text_off: Vec<i64>,
    pub reason: Vec<u8>,
    pub reason_off: Vec<i64>,
    pub tokens: Vec<u8>,
    pub behavior: Vec<u8>,
    pub tok_off: Vec<i64>,
    pub base: Vec<u8>,
    pub base_off: Vec<i64>,
}

impl Columns {
    fn new(cap: usize) -> Columns {
        let mut c = Columns::default();
        for v in [
            &mut c.text_off,
            &mut c.reason_off,
            &mut c.tok_off,
            &mut c.base_off,
        ] {
            v.reserve(cap + 1);
            v.push(0);
        }
        c
    }

    pub fn len(&self) -> usize {
        self.problem.len()
    }

    pub fn is_empty(&self) -> bool {
        self.problem.is_empty()
    }

    fn push(&mut self, h: &AttemptHead, payload: &[u8]) {
        let parts = h.split(payload);
        self.problem.push(h.problem);
        self.stage.push(h.stage);
        self.sample.push(h.sample_index);
        self.correct.push(h.correct as u8);
        self.has_base.push(h.has_base as u8);
        self.text.extend_from_slice(parts.text);
        self.text_off.push(self.text.len() as i64);
        self.reason.extend_from_slice(parts.reason);
        self.reason_off.push(self.reason.len() as i64);
        self.tokens.extend_from_slice(parts.tokens);
        self.behavior.extend_from_slice(parts.behavior);
        self.tok_off.push((self.tokens.len() / 4) as i64);
        self.base.extend_from_slice(parts.base.unwrap_or_default());
        self.base_off.push((self.base.len() / 4) as i64);
    }
}

/// What [`Ledger::sync_problems`] does with a known problem whose fingerprint changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnChange {
    /// set its old attempts aside and record the new reference and fingerprint
    SetAside,
    /// write nothing and fail, naming the changed problems
    Refuse,
}

/// What [`Ledger::sync_problems`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProblemSync {
    /// new problems recorded
    pub added: u64,
    /// known problems left as they were
    pub unchanged: u64,
    /// known problems without a fingerprint that got one (same reference)
    pub adopted: u64,
    /// input indices of the changed problems whose attempts were set aside
    pub changed: Vec<usize>,
    /// attempts set aside with them
    pub set_aside_attempts: u64,
}

/// One write of `sync_problems`, by problem ordinal.
#[derive(Clone, Copy, Debug)]
enum Op {
    New,
    Adopt(u32),
    /// set aside; the bool says whether the reference changed too
    Change(u32, bool),
}

fn push_set_aside(buf: &mut Vec<u8>, entries: &[index::SetAside], heads: &[Loc]) {
    let s = begin_frame(buf, K_SET_ASIDE);
    buf.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (e, head) in entries.iter().zip(heads) {
        buf.extend_from_slice(&e.problem.to_le_bytes());
        for c in &e.counts {
            buf.extend_from_slice(&(c.attempts as u32).to_le_bytes());
        }
        for c in &e.counts {
            buf.extend_from_slice(&(c.correct as u32).to_le_bytes());
        }
        buf.extend_from_slice(&head.to_le_bytes());
    }
    end_frame(buf, s);
}

fn parse_set_aside(
    pl: &[u8],
    problems: usize,
) -> std::result::Result<Vec<index::SetAside>, String> {
    let n = if pl.len() >= 4 {
        rd_u32(pl, 0) as usize
    } else {
        0
    };
    if pl.len() < 4 || 4 + n * SET_ASIDE_ENTRY != pl.len() {
        return Err("set-aside record malformed".into());
    }
    let mut out = Vec::with_capacity(n);
    for e in pl[4..].chunks_exact(SET_ASIDE_ENTRY) {
        let q = rd_u32(e, 0);
        if q as usize >= problems {
            return Err(format!(
                "set-aside record names problem #{q} but only {problems} exist"
            ));
        }
        let mut sa = index::SetAside {
            problem: q,
            ..Default::default()
        };
        for (s, c) in sa.counts.iter_mut().enumerate() {
            c.attempts = rd_u32(e, 4 + 4 * s) as u64;
            c.correct = rd_u32(e, 16 + 4 * s) as u64;
        }
        out.push(sa);
    }
    Ok(out)
}

/// Index of the first float32 in `b` that is NaN or infinite.
fn first_non_finite(b: &[u8]) -> Option<usize> {
    b.chunks_exact(4)
        .position(|c| !f32::from_le_bytes([c[0], c[1], c[2], c[3]]).is_finite())
}

/// The first field in which two attempts with the same key differ.
fn differs(a: &AttemptIn, b: &AttemptIn) -> Option<String> {
    if a.correct != b.correct {
        return Some(format!(
            "correct (recorded {}, now {})",
            a.correct, b.correct
        ));
    }
    let fields: [(&str, &[u8], &[u8]); 5] = [
        ("text", a.text.as_bytes(), b.text.as_bytes()),
        ("reason", a.reason.as_bytes(), b.reason.as_bytes()),
        ("token_ids", a.token_ids, b.token_ids),
        ("behavior_logprobs", a.behavior, b.behavior),
        (
            "base_logprobs",
            a.base.unwrap_or_default(),
            b.base.unwrap_or_default(),
        ),
    ];
    if let Some((name, _, _)) = fields.iter().find(|(_, x, y)| x != y) {
        return Some(name.to_string());
    }
    if a.base.is_some() != b.base.is_some() {
        return Some(format!(
            "base_logprobs (recorded {}, now {})",
            if a.base.is_some() { "present" } else { "None" },
            if b.base.is_some() { "present" } else { "None" }
        ));
    }
    None
}

/// Per-stage and per-tier numbers for `stats()`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub problems: u64,
    pub attempts: u64,
    /// per stage: attempts, correct attempts, problems tried, problems solved
    pub stages: Vec<(String, StageCounts, u64, u64)>,
    /// per tier (self, guided, hinted, expert): problems, mean base log-prob
    /// of the chosen attempts that have base log-probs, and how many had them
    pub tiers: Vec<(String, u64, f64, u64)>,
    pub finished: Vec<(String, u64)>,
    /// problems with a fingerprint
    pub fingerprinted: u64,
    /// set-asides (one per problem each time) and the attempts they set aside
    pub set_aside_problems: u64,
    pub set_aside_attempts: u64,
    pub index_bytes: u64,
    pub segments: u64,
    pub disk_bytes: u64,
}

struct Segment {
    num: u32,
    path: PathBuf,
    file: File,
    /// committed length (what replay accepted; where the writer appends)
    len: u64,
}

impl Segment {
    fn read_at(&self, buf: &mut [u8], off: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| io(&self.path, e))
    }

    /// A frame at `off` that no longer reads back as it was written.
    fn changed(&self, off: u64, detail: &str) -> Error {
        Error::Corrupt {
            path: self.path.display().to_string(),
            offset: off,
            detail: detail.to_string(),
            fix: "the file changed on disk after it was opened; reopen the ledger (repair=True if it reports damage)".into(),
        }
    }

    /// Check the header `h` of the frame of `kind` at `off`; returns its payload's length.
    fn frame_len(&self, off: u64, h: &[u8], kind: u8) -> Result<usize> {
        let len = rd_u32(h, 4) as usize;
        if h[0..2] != FRAME_MAGIC
            || h[2] != kind
            || len > MAX_PAYLOAD
            || off + (FRAME_HEADER + len) as u64 > self.len
        {
            return Err(self.changed(off, "bad frame header"));
        }
        Ok(len)
    }

    /// Check a frame's payload against the checksum in its header `h`.
    fn check_payload(&self, off: u64, h: &[u8], payload: &[u8]) -> Result<()> {
        if crc::crc32c_append(crc::crc32c(&h[0..8]), payload) != rd_u32(h, 8) {
            return Err(self.changed(off, "checksum mismatch"));
        }
        Ok(())
    }
}

/// The ledger. See the module docs.
pub struct Ledger {
    dir: PathBuf,
    readonly: bool,
    segment_bytes: u64,
    _lock: Option<lock::WriterLock>,
    segs: Vec<Segment>,
    index: Index,
    warnings: Vec<String>,
    buf: Vec<u8>,
    /// bytes at the start of `buf` already written by `flush_early`
    flushed: usize,
    poisoned: Option<String>,
    /// the process that opened the ledger: a forked child shares the file
    /// offsets but not the writer lock, so it must not write (its bytes would
    /// be overwritten by the parent's next append)
    owner_pid: u32,
    /// attempt keys (see [`attempt_key`]) of problems with at least
    /// [`LONG_CHAIN`] live attempts, filled when `record` first walks one
    long_chains: HashMap<u32, HashMap<u64, Loc>>,
}

/// Chains at least this long get their keys cached by `find_key`.
const LONG_CHAIN: usize = 64;

/// Refuse `op` when it got `values` of `what` for `ids` ids: one per id is required.
fn one_per_id(op: &str, ids: usize, values: usize, what: &str) -> Result<()> {
    if ids == values {
        return Ok(());
    }
    Err(Error::Msg(format!(
        "{op} got {ids} ids but {values} {what}s; pass one {what} per id"
    )))
}

fn attempt_key(stage: u8, sample: u32) -> u64 {
    ((stage as u64) << 32) | sample as u64
}

fn io(path: &Path, e: std::io::Error) -> Error {
    Error::Io {
        path: path.display().to_string(),
        source: e,
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io(dir, e))
}

/// How to repair the ledger at `dir`, from the shell and from Python.
fn repair_hint(dir: &Path) -> String {
    format!(
        "`onpolicy-sft ledger repair {}` (in Python: Ledger.open(path, repair=True))",
        dir.display()
    )
}

/// Whether directory `dir` holds ledger files (a LOCK or a segment).
fn holds_ledger(dir: &Path) -> Result<bool> {
    if !dir.is_dir() {
        return Ok(false);
    }
    if dir.join(lock::LOCK_FILE).exists() {
        return Ok(true);
    }
    for entry in fs::read_dir(dir).map_err(|e| io(dir, e))? {
        let entry = entry.map_err(|e| io(dir, e))?;
        if entry
            .file_name()
            .to_str()
            .and_then(parse_segment_name)
            .is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

fn mean_f32(bytes: &[u8]) -> f32 {
    if bytes.is_empty() {
        return f32::NAN;
    }
    let mut s = 0f64;
    for c in bytes.chunks_exact(4) {
        s += f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64;
    }
    (s / (bytes.len() / 4) as f64) as f32
}

fn plural(n: u64, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// Whether the file from `pos` on looks like a write a crash interrupted:
/// blocks the kernel never wrote read back as zeros, so the damage is a
/// trailing zero run that is all of the bad region or spans a whole 4 KiB
/// block boundary (a bit flip in a frame that merely ends in a few zero
/// bytes does not).
fn unwritten_tail(data: &[u8], pos: usize) -> bool {
    let z = data.iter().rposition(|&x| x != 0).map_or(0, |i| i + 1);
    if z == data.len() {
        return false;
    }
    z <= pos || z.next_multiple_of(4096) < data.len()
}

/// (start, end) of one payload in a buffer of several.
type Span = (usize, usize);

/// A frame read during replay whose COMMIT has not been seen yet.
struct Pending {
    kind: u8,
    offset: usize,
    payload: usize,
    len: usize,
}

enum Tail {
    Clean,
    /// uncommitted bytes from `at` to the end (a crash or a write in flight)
    Torn {
        at: u64,
        bytes: u64,
        records: u64,
    },
    /// damage at `bad` that valid frames follow; `at` is the last commit before it
    Corrupt {
        at: u64,
        bad: u64,
        detail: String,
    },
}

impl Ledger {
    /// Open (or create) the ledger in directory `dir`.
    pub fn open(dir: &Path, opts: &OpenOptions2) -> Result<Ledger> {
        if opts.repair && opts.readonly {
            return Err(Error::Msg(format!(
                "cannot repair {} read-only: repair cuts files; open with readonly=False, repair=True",
                dir.display()
            )));
        }
        if !dir.exists() {
            if opts.readonly || !opts.create {
                return Err(Error::Msg(format!(
                    "no ledger at {}; check the path, or open with create=True (and readonly=False) to start one",
                    dir.display()
                )));
            }
            fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        } else if !dir.is_dir() {
            return Err(Error::Msg(format!(
                "{} is a file, not a ledger directory; pass a directory path",
                dir.display()
            )));
        } else if !opts.create && !holds_ledger(dir)? {
            let inner = dir.join("ledger");
            let hint = if holds_ledger(&inner).unwrap_or(false) {
                format!(" (it holds one at {}: pass that)", inner.display())
            } else {
                String::new()
            };
            return Err(Error::Msg(format!(
                "{} is not a ledger: it has no LOCK or seg-*.ldg files{hint}; pass a ledger directory \
                 (a rewrite keeps its ledger at OUT/ledger)",
                dir.display()
            )));
        }
        let lock = if opts.readonly {
            None
        } else {
            Some(lock::WriterLock::acquire(dir)?)
        };
        let writer_active = opts.readonly && lock::WriterLock::writer_active(dir)?;
        let mut nums = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| io(dir, e))? {
            let entry = entry.map_err(|e| io(dir, e))?;
            if let Some(n) = entry.file_name().to_str().and_then(parse_segment_name) {
                nums.push(n);
            }
        }
        nums.sort_unstable();
        let mut me = Ledger {
            dir: dir.to_path_buf(),
            readonly: opts.readonly,
            segment_bytes: opts.segment_bytes.max(4096),
            _lock: lock,
            segs: Vec::new(),
            index: Index::default(),
            warnings: Vec::new(),
            buf: Vec::new(),
            flushed: 0,
            poisoned: None,
            owner_pid: std::process::id(),
            long_chains: HashMap::new(),
        };
        let mut data = Vec::new();
        let count = nums.len();
        for (i, &num) in nums.iter().enumerate() {
            let path = dir.join(segment_name(num));
            if num as usize != i + 1 {
                let missing = dir.join(segment_name(i as u32 + 1));
                if opts.repair {
                    me.quarantine_from(
                        &nums[i..],
                        &format!("segment {} is missing", missing.display()),
                    )?;
                    break;
                }
                return Err(Error::Corrupt {
                    path: missing.display().to_string(),
                    offset: 0,
                    detail:
                        "segment file missing (segments must be numbered 1, 2, ... without gaps)"
                            .into(),
                    fix: format!(
                        "restore the file, or run {} to keep the segments before the gap",
                        repair_hint(dir)
                    ),
                });
            }
            let is_last = i + 1 == count;
            let file = if opts.readonly {
                File::open(&path)
            } else {
                OpenOptions::new().read(true).write(true).open(&path)
            }
            .map_err(|e| io(&path, e))?;
            data.clear();
            (&file).read_to_end(&mut data).map_err(|e| io(&path, e))?;
            let (tail, valid) = match me.replay(num, &path, &data, is_last) {
                // a damaged segment header: nothing of it was applied, so
                // repair can set this and every later segment aside
                Err(Error::Corrupt { offset, detail, .. })
                    if opts.repair && offset < SEG_HEADER as u64 =>
                {
                    me.quarantine_from(
                        &nums[i..],
                        &format!("{} has a damaged header: {detail}", path.display()),
                    )?;
                    break;
                }
                r => r?,
            };
            let valid = valid as u64;
            match tail {
                Tail::Clean => {}
                Tail::Torn { at, bytes, records } => {
                    let what = format!(
                        "{}: torn tail of {} ({}) after byte offset {at}, left by an unacknowledged write",
                        path.display(),
                        plural(bytes, "byte"),
                        plural(records, "record"),
                    );
                    if !opts.readonly {
                        file.set_len(at).map_err(|e| io(&path, e))?;
                        file.sync_all().map_err(|e| io(&path, e))?;
                        me.warnings.push(format!("{what}; cut it"));
                    } else if !writer_active {
                        me.warnings.push(format!(
                            "{what}; ignored it (read-only; a writer's open will cut it)"
                        ));
                    }
                }
                Tail::Corrupt { at, bad, detail } => {
                    if !opts.repair {
                        return Err(Error::Corrupt {
                            path: path.display().to_string(),
                            offset: bad,
                            detail: format!(
                                "{detail}; not a torn tail from a crash (whole records or later segments follow it)"
                            ),
                            fix: format!(
                                "run {} to keep everything before byte {at} (the last whole commit) and move the rest aside, or restore the file from a copy",
                                repair_hint(dir)
                            ),
                        });
                    }
                    let qpath = dir.join(format!("{}.quarantine-at-{at}", segment_name(num)));
                    fs::write(&qpath, &data[at as usize..]).map_err(|e| io(&qpath, e))?;
                    file.set_len(at).map_err(|e| io(&path, e))?;
                    file.sync_all().map_err(|e| io(&path, e))?;
                    me.warnings.push(format!(
                        "{}: repaired: {detail} at byte offset {bad}; kept everything before byte {at} (the last whole commit) and moved the {} after it to {}",
                        path.display(),
                        plural(data.len() as u64 - at, "byte"),
                        qpath.display()
                    ));
                    me.segs.push(Segment {
                        num,
                        path,
                        file,
                        len: at,
                    });
                    me.quarantine_from(&nums[i + 1..], "they follow a repaired corruption")?;
                    break;
                }
            }
            if is_last && valid < SEG_HEADER as u64 {
                // a segment whose header never made it to disk
                if !opts.readonly {
                    fs::remove_file(&path).map_err(|e| io(&path, e))?;
                    sync_dir(dir)?;
                }
                continue;
            }
            me.segs.push(Segment {
                num,
                path,
                file,
                len: valid,
            });
        }
        me.index.shrink();
        Ok(me)
    }

    fn quarantine_from(&mut self, nums: &[u32], why: &str) -> Result<()> {
        for &n in nums {
            let from = self.dir.join(segment_name(n));
            let to = self.dir.join(format!("{}.quarantine", segment_name(n)));
            fs::rename(&from, &to).map_err(|e| io(&from, e))?;
            self.warnings.push(format!(
                "repair: moved {} aside to {} ({why})",
                from.display(),
                to.display()
            ));
        }
        sync_dir(&self.dir)
    }

    /// Replay one segment into the index. Returns the state of its tail and
    /// the length of its committed prefix.
    fn replay(
        &mut self,
        num: u32,
        path: &Path,
        data: &[u8],
        is_last: bool,
    ) -> Result<(Tail, usize)> {
        let fix = format!(
            "restore the file from a copy, or run {} to keep what precedes it",
            repair_hint(&self.dir)
        );
        let corrupt = |offset: usize, detail: String| Error::Corrupt {
            path: path.display().to_string(),
            offset: offset as u64,
            detail,
            fix: fix.clone(),
        };
        if data.len() < SEG_HEADER {
            if is_last {
                let bytes = data.len() as u64;
                let tail = if bytes == 0 {
                    Tail::Clean
                } else {
                    Tail::Torn {
                        at: 0,
                        bytes,
                        records: 0,
                    }
                };
                return Ok((tail, 0));
            }
            return Err(corrupt(
                0,
                format!("segment is {} bytes, shorter than its header", data.len()),
            ));
        }
        if &data[..8] != SEG_MAGIC {
            return Err(corrupt(0, "not a ledger segment (bad magic)".into()));
        }
        let version = rd_u32(data, 8);
        if version != FORMAT_VERSION {
            return Err(Error::Msg(format!(
                "{} has ledger format version {version}; this build reads version {FORMAT_VERSION}; use a matching onpolicy-sft",
                path.display()
            )));
        }
        if rd_u32(data, 12) != num {
            return Err(corrupt(
                12,
                format!(
                    "header says segment {} but the file name says {num}",
                    rd_u32(data, 12)
                ),
            ));
        }
        let mut pos = SEG_HEADER;
        let mut committed = SEG_HEADER;
        let mut pending: Vec<Pending> = Vec::new();
        // (offset, why, whether it looks like an interrupted write)
        let mut bad: Option<(usize, &'static str, bool)> = None;
        while pos < data.len() {
            match check_frame(data, pos) {
                Ok(f) => {
                    if f.kind == K_COMMIT {
                        if f.len != 12 {
                            return Err(corrupt(pos, "commit frame of the wrong size".into()));
                        }
                        let sealed = rd_u32(data, f.payload + 8) as usize;
                        if sealed != pending.len() {
                            bad = Some((
                                pos,
                                "commit frame seals a different number of records than precede it",
                                false,
                            ));
                            break;
                        }
                        let new_problems = pending.iter().filter(|p| p.kind == K_PROBLEM).count();
                        self.index.reserve(new_problems);
                        for p in pending.drain(..) {
                            Self::apply(&mut self.index, num, data, &p)
                                .map_err(|d| corrupt(p.offset, d))?;
                        }
                        committed = f.next;
                    } else {
                        pending.push(Pending {
                            kind: f.kind,
                            offset: pos,
                            payload: f.payload,
                            len: f.len,
                        });
                    }
                    pos = f.next;
                }
                Err(BadFrame::Truncated) => {
                    bad = Some((pos, "record cut short", true));
                    break;
                }
                Err(BadFrame::Invalid(why)) => {
                    bad = Some((pos, why, unwritten_tail(data, pos)));
                    break;
                }
            }
        }
        let tail = match bad {
            None if pending.is_empty() => Tail::Clean,
            None => {
                if !is_last {
                    return Err(corrupt(
                        committed,
                        "records without a commit at the end of a segment that is not the last"
                            .into(),
                    ));
                }
                Tail::Torn {
                    at: committed as u64,
                    bytes: (data.len() - committed) as u64,
                    records: pending.len() as u64,
                }
            }
            Some((b, why, interrupted)) => {
                // A crash leaves a prefix of the last write (a frame cut short)
                // or zeros; a whole frame with a bad checksum, or valid frames
                // after a bad one, is damage, not a crash.
                if is_last && interrupted && resync(data, b + 1).is_none() {
                    // the cut-off frame counts as a record unless it is a commit
                    let partial = (data.get(b + 2) != Some(&K_COMMIT)) as u64;
                    Tail::Torn {
                        at: committed as u64,
                        bytes: (data.len() - committed) as u64,
                        records: pending.len() as u64 + partial,
                    }
                } else {
                    Tail::Corrupt {
                        at: committed as u64,
                        bad: b as u64,
                        detail: why.to_string(),
                    }
                }
            }
        };
        Ok((tail, committed))
    }

    fn apply(
        ix: &mut Index,
        num: u32,
        data: &[u8],
        p: &Pending,
    ) -> std::result::Result<(), String> {
        let pl = &data[p.payload..p.payload + p.len];
        match p.kind {
            K_PROBLEM => {
                if pl.len() < 8 {
                    return Err("problem record too short".into());
                }
                let (il, rl) = (rd_u32(pl, 0) as usize, rd_u32(pl, 4) as usize);
                if 8 + il + rl != pl.len() {
                    return Err("problem record sizes do not add up".into());
                }
                let id = std::str::from_utf8(&pl[8..8 + il])
                    .map_err(|_| "problem id is not UTF-8".to_string())?;
                let loc = make_loc(num, p.offset as u64);
                let (q, added) = ix.insert(id, loc);
                if !added {
                    // a new reference, written with the set-aside of its old attempts
                    ix.ref_loc[q as usize] = loc;
                }
            }
            K_FINGERPRINT => {
                let n = if pl.len() >= 4 {
                    rd_u32(pl, 0) as usize
                } else {
                    0
                };
                if pl.len() < 4 || 4 + n * FP_ENTRY != pl.len() {
                    return Err("fingerprint record malformed".into());
                }
                for e in pl[4..].chunks_exact(FP_ENTRY) {
                    let q = rd_u32(e, 0);
                    if q as usize >= ix.len() {
                        return Err(format!(
                            "fingerprint record names problem #{q} but only {} exist",
                            ix.len()
                        ));
                    }
                    let mut fp = [0u8; FP_LEN];
                    fp.copy_from_slice(&e[4..]);
                    ix.set_fingerprint(q, &fp);
                }
            }
            K_SET_ASIDE => {
                let entries = parse_set_aside(pl, ix.len())?;
                ix.set_aside(&entries);
            }
            K_ATTEMPT => {
                let h = AttemptHead::read(pl).ok_or("attempt record sizes do not add up")?;
                if h.problem as usize >= ix.len() {
                    return Err(format!(
                        "attempt refers to problem #{} but only {} exist",
                        h.problem,
                        ix.len()
                    ));
                }
                ix.add_attempt(&AttemptFacts {
                    problem: h.problem,
                    stage: h.stage,
                    correct: h.correct,
                    sample_index: h.sample_index,
                    score: h.score,
                    score_from_base: h.has_base,
                    ntok: h.ntok,
                    text_len: h.text_len,
                    loc: make_loc(num, p.offset as u64),
                });
            }
            K_FINISH => {
                if pl.len() < 8
                    || pl[0] as usize >= N_STAGES
                    || 8 + 4 * rd_u32(pl, 4) as usize != pl.len()
                {
                    return Err("finish record malformed".into());
                }
                let bit = 1u8 << pl[0];
                for c in pl[8..].chunks_exact(4) {
                    let q = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
                    if q >= ix.len() {
                        return Err(format!(
                            "finish record names problem #{q} but only {} exist",
                            ix.len()
                        ));
                    }
                    ix.finished[q] |= bit;
                }
            }
            _ => return Err(format!("unexpected frame kind {}", p.kind)),
        }
        Ok(())
    }

    /// The attempts of problem `p` newest first: (location, stage, sample, correct).
    fn chain(&self, p: u32) -> Result<Vec<(Loc, u8, u32, bool)>> {
        let mut out = Vec::new();
        let mut loc = self.index.last_attempt[p as usize];
        let mut h = [0u8; FRAME_HEADER + ATTEMPT_HEAD];
        while loc != 0 {
            let (num, off) = (loc_seg(loc), loc_offset(loc));
            let seg = &self.segs[num as usize - 1];
            seg.read_at(&mut h, off)?;
            let a = &h[FRAME_HEADER..];
            out.push((loc, a[8], rd_u32(a, 4), a[9] == 1));
            let prev = rd_u64(a, 28);
            if prev >= loc {
                return Err(Error::Corrupt {
                    path: seg.path.display().to_string(),
                    offset: off,
                    detail: "attempt chain points forward".into(),
                    fix: "reopen the ledger".into(),
                });
            }
            loc = prev;
        }
        Ok(out)
    }

    /// The newest live attempt of problem `p` with this stage and sample index.
    /// Looks on disk only when the problem's key filter has the key's bit;
    /// a problem with many attempts gets its keys cached after one walk.
    fn find_key(&mut self, p: u32, stage: u8, sample: u32) -> Result<Option<Loc>> {
        if self.index.key_bits[p as usize] & index::key_bit(stage, sample) == 0 {
            return Ok(None);
        }
        let key = attempt_key(stage, sample);
        if let Some(keys) = self.long_chains.get(&p) {
            return Ok(keys.get(&key).copied());
        }
        let chain = self.chain(p)?;
        let found = chain
            .iter()
            .find(|&&(_, s, k, _)| s == stage && k == sample)
            .map(|c| c.0);
        if chain.len() >= LONG_CHAIN {
            let mut keys = HashMap::with_capacity(chain.len());
            for &(loc, s, k, _) in chain.iter().rev() {
                keys.insert(attempt_key(s, k), loc);
            }
            self.long_chains.insert(p, keys);
        }
        Ok(found)
    }

    /// Warnings from opening (torn tails cut, repairs made).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn index(&self) -> &Index {
        &self.index
    }

    fn check_writable(&self) -> Result<()> {
        if std::process::id() != self.owner_pid {
            return Err(Error::Msg(format!(
                "ledger {} was opened by process {}, and this process ({}) is a fork of it that \
                 does not hold the writer lock; open the ledger in the child instead (readonly=True \
                 to read), or write from the parent only",
                self.dir.display(),
                self.owner_pid,
                std::process::id()
            )));
        }
        if self.readonly {
            return Err(Error::Msg(format!(
                "ledger {} is open read-only; open it with readonly=False to write",
                self.dir.display()
            )));
        }
        if let Some(p) = &self.poisoned {
            return Err(Error::Msg(format!(
                "ledger {} refused the write: an earlier write failed and could not be rolled back ({p}); reopen it",
                self.dir.display()
            )));
        }
        Ok(())
    }

    /// Make sure the current segment can take `need` more bytes.
    fn ensure_room(&mut self, need: usize) -> Result<()> {
        let roll = match self.segs.last() {
            None => true,
            Some(s) => s.len > SEG_HEADER as u64 && s.len + need as u64 > self.segment_bytes,
        };
        if !roll {
            return Ok(());
        }
        let num = self.segs.last().map_or(1, |s| s.num + 1);
        if num >= 1 << 24 {
            return Err(Error::Msg(
                "ledger has 2^24 segments; merge it into a new ledger".into(),
            ));
        }
        let path = self.dir.join(segment_name(num));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        file.write_all_at(&segment_header(num), 0)
            .map_err(|e| io(&path, e))?;
        file.sync_all().map_err(|e| io(&path, e))?;
        sync_dir(&self.dir)?;
        self.segs.push(Segment {
            num,
            path,
            file,
            len: SEG_HEADER as u64,
        });
        Ok(())
    }

    /// Append `self.buf` to the current segment and fsync it.
    fn append_buf(&mut self) -> Result<()> {
        let seg = self.segs.last_mut().expect("ensure_room made a segment");
        let at = seg.len;
        let done = std::mem::take(&mut self.flushed);
        let res = seg
            .file
            .write_all_at(&self.buf[done..], at + done as u64)
            .and_then(|_| seg.file.sync_data());
        if let Err(e) = res {
            self.undo_write(at);
            return Err(io(&self.segs.last().expect("segment").path, e));
        }
        seg.len += self.buf.len() as u64;
        Ok(())
    }

    /// Cut the current segment back to `at` after a failed write.
    fn undo_write(&mut self, at: u64) {
        self.flushed = 0;
        let seg = self.segs.last_mut().expect("segment");
        if let Err(e2) = seg.file.set_len(at).and_then(|_| seg.file.sync_data()) {
            self.poisoned = Some(format!("cutting back {} failed: {e2}", seg.path.display()));
        }
    }

    /// During a large `record`, write what is encoded so far and ask the
    /// kernel to start writing it back (sync_file_range), so the disk works
    /// while the rest is encoded and the final fdatasync waits less. The
    /// bytes are not committed until the COMMIT frame is durable, so a crash
    /// in between leaves a torn tail that the next open cuts.
    fn flush_early(&mut self) -> Result<()> {
        const CHUNK: usize = 1 << 20;
        if self.buf.len() - self.flushed < CHUNK {
            return Ok(());
        }
        let seg = self.segs.last().expect("segment");
        let at = seg.len + self.flushed as u64;
        let n = self.buf.len() - self.flushed;
        if let Err(e) = seg.file.write_all_at(&self.buf[self.flushed..], at) {
            let (path, start) = (seg.path.clone(), seg.len);
            self.undo_write(start);
            return Err(io(&path, e));
        }
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: valid fd and range; the call is advisory, errors are ignored.
            unsafe {
                libc::sync_file_range(
                    seg.file.as_raw_fd(),
                    at as libc::off64_t,
                    n as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
        }
        self.flushed += n;
        Ok(())
    }

    fn cur_loc(&self) -> Loc {
        let seg = self.segs.last().expect("segment");
        make_loc(seg.num, seg.len + self.buf.len() as u64)
    }

    fn push_commit(&mut self, frames: u32) {
        let s = begin_frame(&mut self.buf, K_COMMIT);
        self.buf.extend_from_slice(&0u64.to_le_bytes());
        self.buf.extend_from_slice(&frames.to_le_bytes());
        end_frame(&mut self.buf, s);
    }

    /// Add problems with their references (expert solutions). Idempotent:
    /// a problem already present with the same reference is skipped.
    pub fn add_problems(&mut self, ids: &[&str], refs: &[&str]) -> Result<()> {
        self.sync_problems(ids, refs, None, OnChange::Refuse)
            .map(|_| ())
    }

    /// Add problems, or bring existing ones up to date, by fingerprint.
    ///
    /// With `fps` (one per id): a new problem is added with its fingerprint;
    /// a known one with the same fingerprint is left alone; a known one
    /// without a fingerprint (recorded before fingerprints existed) and with
    /// the same reference adopts it; any other known problem has *changed*:
    /// with [`OnChange::SetAside`] its attempts and stage marks are set aside
    /// (kept on disk, out of assignment and stats, counted) and its new
    /// reference and fingerprint recorded, in the same commit, so a crash
    /// leaves the old state or the new one; with [`OnChange::Refuse`] nothing
    /// is written and the error names every changed problem. Without `fps`
    /// a changed reference is refused as before.
    pub fn sync_problems(
        &mut self,
        ids: &[&str],
        refs: &[&str],
        fps: Option<&[[u8; FP_LEN]]>,
        on_change: OnChange,
    ) -> Result<ProblemSync> {
        self.check_writable()?;
        one_per_id("add_problems", ids.len(), refs.len(), "reference")?;
        if let Some(f) = fps {
            one_per_id("add_problems", ids.len(), f.len(), "fingerprint")?;
            if let Some(i) = f.iter().position(|x| *x == [0; FP_LEN]) {
                return Err(Error::Msg(format!(
                    "fingerprint #{i} (problem {:?}) is all zeros, which means \"none\"; compute it with problem_fingerprint",
                    ids[i]
                )));
            }
        }
        let fp_of = |i: usize| fps.map(|f| f[i]);
        let mut report = ProblemSync::default();
        // (input index, what to write)
        let mut ops: Vec<(usize, Op)> = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut changed: Vec<usize> = Vec::new();
        for (i, (&id, &r)) in ids.iter().zip(refs).enumerate() {
            if id.is_empty() || id.len() > 65_536 {
                return Err(Error::Msg(format!(
                    "problem id #{i} is {} bytes; ids must be 1 to 65536 bytes",
                    id.len()
                )));
            }
            if 8 + id.len() + r.len() > MAX_PAYLOAD {
                return Err(Error::TooLarge {
                    what: format!("reference of problem {id:?}"),
                    size: r.len(),
                    limit: MAX_PAYLOAD - 8 - id.len(),
                    fix: "shorten the reference".into(),
                });
            }
            if let Some(&j) = seen.get(id) {
                if refs[j] != r || fp_of(j) != fp_of(i) {
                    return Err(Error::Msg(format!(
                        "problem {id:?} appears twice (#{j} and #{i}) with different {}; problem ids must be unique (de-duplicate the dataset or give the variants distinct ids)",
                        if refs[j] != r { "references" } else { "fingerprints" }
                    )));
                }
                continue;
            }
            seen.insert(id, i);
            let Some(p) = self.index.lookup(id) else {
                ops.push((i, Op::New));
                continue;
            };
            let same_ref = self.reference(p)? == r;
            let old_fp = self.index.fingerprint(p).copied();
            match fp_of(i) {
                None if same_ref => report.unchanged += 1,
                None => {
                    return Err(Error::Msg(format!(
                        "problem {id:?} is already in the ledger with a different reference; problem ids must be unique (de-duplicate the dataset or give the variants distinct ids); if the dataset was edited, pass fingerprints (problem_fingerprint) so that changed problems are set aside and redone"
                    )))
                }
                Some(fp) if old_fp == Some(fp) => {
                    if !same_ref {
                        return Err(Error::Msg(format!(
                            "problem {id:?} has the fingerprint it was recorded with but a different reference; compute the fingerprint from the same problem, solution and reference (problem_fingerprint)"
                        )));
                    }
                    report.unchanged += 1;
                }
                Some(_) if old_fp.is_none() && same_ref => ops.push((i, Op::Adopt(p))),
                Some(_) => {
                    changed.push(i);
                    ops.push((i, Op::Change(p, !same_ref)));
                }
            }
        }
        if !changed.is_empty() && on_change == OnChange::Refuse {
            let shown: Vec<String> = changed
                .iter()
                .take(5)
                .map(|&i| format!("#{i} {:?}", ids[i]))
                .collect();
            return Err(Error::Msg(format!(
                "{} changed since {} recorded (fingerprint differs): {}{}; set their old attempts aside to redo them, or restore the original data",
                plural(changed.len() as u64, "problem"),
                if changed.len() == 1 { "it was" } else { "they were" },
                shown.join(", "),
                if changed.len() > 5 { ", ..." } else { "" }
            )));
        }
        let mut start = 0;
        while start < ops.len() {
            // chunks of at most 64 MiB, each its own commit (a rerun redoes
            // only what is missing, since every op is decided by fingerprint)
            let mut end = start;
            let mut size = 3 * FRAME_HEADER + 12 + 8;
            while end < ops.len() && (end == start || size < 64 << 20) {
                let i = ops[end].0;
                size +=
                    FRAME_HEADER + 8 + ids[i].len() + refs[i].len() + FP_ENTRY + SET_ASIDE_ENTRY;
                end += 1;
            }
            let chunk = &ops[start..end];
            let mut entries = Vec::new();
            let mut heads = Vec::new();
            for &(_, op) in chunk {
                if let Op::Change(p, _) = op {
                    let (e, head) = self.set_aside_entry(p)?;
                    entries.push(e);
                    heads.push(head);
                }
            }
            self.ensure_room(size)?;
            self.buf.clear();
            let mut frames = 0u32;
            if !entries.is_empty() {
                push_set_aside(&mut self.buf, &entries, &heads);
                frames += 1;
            }
            let mut next = self.index.len() as u32;
            let mut placed: Vec<(usize, u32, Option<Loc>)> = Vec::with_capacity(chunk.len());
            for &(i, op) in chunk {
                let (p, write_ref) = match op {
                    Op::New => {
                        next += 1;
                        (next - 1, true)
                    }
                    Op::Adopt(p) => (p, false),
                    Op::Change(p, new_ref) => (p, new_ref),
                };
                let loc = if write_ref {
                    let loc = self.cur_loc();
                    let s = begin_frame(&mut self.buf, K_PROBLEM);
                    self.buf
                        .extend_from_slice(&(ids[i].len() as u32).to_le_bytes());
                    self.buf
                        .extend_from_slice(&(refs[i].len() as u32).to_le_bytes());
                    self.buf.extend_from_slice(ids[i].as_bytes());
                    self.buf.extend_from_slice(refs[i].as_bytes());
                    end_frame(&mut self.buf, s);
                    frames += 1;
                    Some(loc)
                } else {
                    None
                };
                placed.push((i, p, loc));
            }
            if let Some(f) = fps {
                let s = begin_frame(&mut self.buf, K_FINGERPRINT);
                self.buf
                    .extend_from_slice(&(placed.len() as u32).to_le_bytes());
                for &(i, p, _) in &placed {
                    self.buf.extend_from_slice(&p.to_le_bytes());
                    self.buf.extend_from_slice(&f[i]);
                }
                end_frame(&mut self.buf, s);
                frames += 1;
            }
            self.push_commit(frames);
            self.append_buf()?;
            self.index.reserve(chunk.len());
            self.forget_chains(&entries);
            report.set_aside_attempts += entries
                .iter()
                .flat_map(|e| e.counts.iter().map(|c| c.attempts))
                .sum::<u64>();
            self.index.set_aside(&entries);
            for (&(i, op), &(_, p, loc)) in chunk.iter().zip(&placed) {
                match op {
                    Op::New => {
                        self.index
                            .push_problem(ids[i], loc.expect("new problems are written"));
                        report.added += 1;
                    }
                    Op::Adopt(_) => report.adopted += 1,
                    Op::Change(..) => report.changed.push(i),
                }
                if let Some(l) = loc {
                    self.index.ref_loc[p as usize] = l;
                }
                if let Some(f) = fps {
                    self.index.set_fingerprint(p, &f[i]);
                }
            }
            start = end;
        }
        Ok(report)
    }

    /// The ordinals of problems `ids`; `what` names the caller in the error
    /// for an unknown one.
    fn ordinals(&self, what: &str, ids: &[&str]) -> Result<Vec<u32>> {
        ids.iter()
            .enumerate()
            .map(|(i, id)| {
                self.index.lookup(id).ok_or_else(|| {
                    Error::Msg(format!(
                        "{what}: problem #{i} {id:?} is not in the ledger; add it with add_problems first"
                    ))
                })
            })
            .collect()
    }

    /// What setting problem `p`'s attempts aside removes, and its chain head.
    fn set_aside_entry(&self, p: u32) -> Result<(index::SetAside, Loc)> {
        let mut e = index::SetAside {
            problem: p,
            ..Default::default()
        };
        for (_, stage, _, correct) in self.chain(p)? {
            let c = &mut e.counts[stage as usize];
            c.attempts += 1;
            c.correct += correct as u64;
        }
        Ok((e, self.index.last_attempt[p as usize]))
    }

    fn forget_chains(&mut self, entries: &[index::SetAside]) {
        for e in entries {
            self.long_chains.remove(&e.problem);
        }
    }

    /// Set aside every live attempt and stage mark of these problems: the
    /// records stay on disk but leave assignment, `attempts`, `pending` and
    /// stats (which count them under `set_aside`), so the problems are redone
    /// from the first stage. Durable and all-or-nothing per chunk; problems
    /// with nothing to set aside are skipped. Returns (problems, attempts)
    /// set aside.
    pub fn set_aside(&mut self, ids: &[&str]) -> Result<(u64, u64)> {
        self.check_writable()?;
        let ix = &self.index;
        let mut ps: Vec<u32> = self
            .ordinals("set_aside", ids)?
            .into_iter()
            .filter(|&p| {
                let u = p as usize;
                ix.last_attempt[u] != 0 || ix.finished[u] != 0 || ix.tried[u] != 0
            })
            .collect();
        ps.sort_unstable();
        ps.dedup();
        let (mut problems, mut attempts) = (0u64, 0u64);
        for chunk in ps.chunks(1 << 20) {
            let mut entries = Vec::with_capacity(chunk.len());
            let mut heads = Vec::with_capacity(chunk.len());
            for &p in chunk {
                let (e, head) = self.set_aside_entry(p)?;
                entries.push(e);
                heads.push(head);
            }
            self.ensure_room(2 * FRAME_HEADER + 12 + 4 + SET_ASIDE_ENTRY * chunk.len())?;
            self.buf.clear();
            push_set_aside(&mut self.buf, &entries, &heads);
            self.push_commit(1);
            self.append_buf()?;
            self.forget_chains(&entries);
            problems += entries.len() as u64;
            attempts += entries
                .iter()
                .flat_map(|e| e.counts.iter().map(|c| c.attempts))
                .sum::<u64>();
            self.index.set_aside(&entries);
        }
        Ok((problems, attempts))
    }

    /// Record fingerprints as they are (no set-aside; `merge` copies them
    /// with this). Durable when it returns.
    pub fn set_fingerprints(&mut self, ids: &[&str], fps: &[[u8; FP_LEN]]) -> Result<()> {
        self.check_writable()?;
        one_per_id("set_fingerprints", ids.len(), fps.len(), "fingerprint")?;
        let ps = self.ordinals("set_fingerprints", ids)?;
        for (ps, fs) in ps.chunks(1 << 20).zip(fps.chunks(1 << 20)) {
            self.ensure_room(2 * FRAME_HEADER + 12 + 4 + FP_ENTRY * ps.len())?;
            self.buf.clear();
            let s = begin_frame(&mut self.buf, K_FINGERPRINT);
            self.buf.extend_from_slice(&(ps.len() as u32).to_le_bytes());
            for (p, f) in ps.iter().zip(fs) {
                self.buf.extend_from_slice(&p.to_le_bytes());
                self.buf.extend_from_slice(f);
            }
            end_frame(&mut self.buf, s);
            self.push_commit(1);
            self.append_buf()?;
            for (&p, f) in ps.iter().zip(fs) {
                self.index.set_fingerprint(p, f);
            }
        }
        Ok(())
    }

    /// The fingerprint of problem `p`, if one was recorded.
    pub fn fingerprint(&self, p: u32) -> Option<&[u8; FP_LEN]> {
        self.index.fingerprint(p)
    }

    /// Record attempts; durable (fsynced) when it returns. All or nothing:
    /// a bad attempt anywhere in the batch rejects the whole batch.
    ///
    /// A (problem, stage, sample_index) is recorded once: an attempt equal to
    /// the live one with its key (or to an earlier one in the batch) is
    /// skipped, so recording a batch again is a no-op; a different one is an
    /// error naming the key and the first field that differs.
    pub fn record(&mut self, attempts: &[AttemptIn]) -> Result<()> {
        self.check_writable()?;
        if attempts.is_empty() {
            return Ok(());
        }
        let mut probs = Vec::with_capacity(attempts.len());
        let mut skip = vec![false; attempts.len()];
        // (problem, key) -> index in the batch, built only once a key's filter
        // bit is found set (most batches never need it)
        let mut batch_keys: Option<HashMap<(u32, u64), usize>> = None;
        let mut all_probs = Vec::with_capacity(attempts.len());
        let mut scratch = Vec::new();
        let mut total = FRAME_HEADER + 12;
        for (i, a) in attempts.iter().enumerate() {
            let p = self.index.lookup(a.problem_id).ok_or_else(|| {
                Error::Msg(format!(
                    "attempt #{i} is for problem {:?}, which is not in the ledger; add it with add_problems(ids, references) first",
                    a.problem_id
                ))
            })?;
            let who = || {
                format!(
                    "attempt #{i} (problem {:?}, stage {}, sample {})",
                    a.problem_id,
                    STAGE_NAMES.get(a.stage as usize).unwrap_or(&"?"),
                    a.sample_index
                )
            };
            if a.stage as usize >= N_STAGES {
                return Err(Error::Msg(format!(
                    "{}: stage code {} unknown; stages are self, guided, hinted",
                    who(),
                    a.stage
                )));
            }
            if a.token_ids.len() % 4 != 0 || a.behavior.len() % 4 != 0 {
                return Err(Error::Msg(format!(
                    "{}: arrays must be 4-byte elements",
                    who()
                )));
            }
            if a.behavior.len() != a.token_ids.len() {
                return Err(Error::Msg(format!(
                    "{}: behavior_logprobs has {} values but token_ids has {}; give one log-prob per response token",
                    who(),
                    a.behavior.len() / 4,
                    a.token_ids.len() / 4
                )));
            }
            if let Some(b) = a.base {
                if b.len() != a.token_ids.len() {
                    return Err(Error::Msg(format!(
                        "{}: base_logprobs has {} values but token_ids has {}; give one log-prob per response token, or None",
                        who(),
                        b.len() / 4,
                        a.token_ids.len() / 4
                    )));
                }
            }
            for (name, arr) in [
                ("behavior_logprobs", Some(a.behavior)),
                ("base_logprobs", a.base),
            ] {
                if let Some(j) = arr.and_then(first_non_finite) {
                    let v = f32::from_le_bytes(arr.unwrap()[4 * j..4 * j + 4].try_into().unwrap());
                    return Err(Error::Msg(format!(
                        "{}: {name}[{j}] is {v}; log-probs must be finite (drop the sample, or score it again)",
                        who()
                    )));
                }
            }
            let arrays = if a.base.is_some() { 3 } else { 2 };
            let payload = ATTEMPT_HEAD + a.text.len() + a.reason.len() + arrays * a.token_ids.len();
            if payload > MAX_PAYLOAD || a.text.len() > u32::MAX as usize {
                return Err(Error::TooLarge {
                    what: who(),
                    size: payload,
                    limit: MAX_PAYLOAD,
                    fix: "split or shorten the response".into(),
                });
            }
            all_probs.push(p);
            let key = attempt_key(a.stage, a.sample_index);
            let bit = index::key_bit(a.stage, a.sample_index);
            let bits = &mut self.index.key_bits[p as usize];
            let fresh = *bits & bit == 0;
            // a set bit too many only costs a look on disk, so it is set now
            // and left set if the batch fails
            *bits |= bit;
            if fresh {
                if let Some(m) = batch_keys.as_mut() {
                    m.insert((p, key), i);
                }
                total += FRAME_HEADER + payload;
                probs.push(p);
                continue;
            }
            let m = batch_keys.get_or_insert_with(|| {
                (0..i)
                    .map(|j| {
                        let b = &attempts[j];
                        ((all_probs[j], attempt_key(b.stage, b.sample_index)), j)
                    })
                    .collect()
            });
            let earlier = match m.entry((p, key)) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    let j = *e.get();
                    Some((
                        differs(&attempts[j], a),
                        format!("attempt #{j} of this batch"),
                    ))
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(i);
                    match self.find_key(p, a.stage, a.sample_index)? {
                        None => None,
                        Some(loc) => {
                            self.read_frame(loc, K_ATTEMPT, &mut scratch)?;
                            let h = AttemptHead::read(&scratch).ok_or_else(|| Error::Corrupt {
                                path: self.dir.display().to_string(),
                                offset: loc_offset(loc),
                                detail: "attempt record sizes do not add up".into(),
                                fix: "reopen the ledger".into(),
                            })?;
                            let old = attempt_in(a.problem_id, &h, &scratch)?;
                            Some((differs(&old, a), "the attempt recorded earlier".to_string()))
                        }
                    }
                }
            };
            match earlier {
                None => {}
                Some((None, _)) => {
                    skip[i] = true;
                    continue;
                }
                Some((Some(field), what)) => {
                    return Err(Error::Msg(format!(
                        "{}: {field} differs from {what} with this (problem, stage, sample_index); an attempt is recorded once per key (recording the same attempt again is a no-op): give a new sample a new sample_index, or, if the problem changed, set its old attempts aside first (add_problems with fingerprints, or set_aside)",
                        who()
                    )));
                }
            }
            total += FRAME_HEADER + payload;
            probs.push(p);
        }
        if probs.is_empty() {
            return Ok(());
        }
        self.ensure_room(total)?;
        self.buf.clear();
        self.buf.reserve(total);
        let mut facts = Vec::with_capacity(probs.len());
        let mut undo: Vec<(u32, Loc)> = Vec::with_capacity(probs.len());
        let kept = attempts
            .iter()
            .zip(&skip)
            .filter(|(_, &s)| !s)
            .map(|(a, _)| a);
        for (a, &p) in kept.zip(&probs) {
            let loc = self.cur_loc();
            let prev = self.index.last_attempt[p as usize];
            undo.push((p, prev));
            self.index.last_attempt[p as usize] = loc;
            let score = mean_f32(a.base.unwrap_or(a.behavior));
            let h = AttemptHead {
                problem: p,
                sample_index: a.sample_index,
                stage: a.stage,
                correct: a.correct,
                has_base: a.base.is_some(),
                ntok: (a.token_ids.len() / 4) as u32,
                text_len: a.text.len() as u32,
                reason_len: a.reason.len() as u32,
                score,
                prev,
            };
            let s = begin_frame(&mut self.buf, K_ATTEMPT);
            h.write(&mut self.buf);
            self.buf.extend_from_slice(a.text.as_bytes());
            self.buf.extend_from_slice(a.reason.as_bytes());
            self.buf.extend_from_slice(a.token_ids);
            self.buf.extend_from_slice(a.behavior);
            if let Some(b) = a.base {
                self.buf.extend_from_slice(b);
            }
            end_frame(&mut self.buf, s);
            facts.push(AttemptFacts {
                problem: p,
                stage: a.stage,
                correct: a.correct,
                sample_index: a.sample_index,
                score,
                score_from_base: a.base.is_some(),
                ntok: h.ntok,
                text_len: h.text_len,
                loc,
            });
            if let Err(e) = self.flush_early() {
                for (p, prev) in undo.into_iter().rev() {
                    self.index.last_attempt[p as usize] = prev;
                }
                return Err(e);
            }
        }
        self.push_commit(probs.len() as u32);
        if let Err(e) = self.append_buf() {
            for (p, prev) in undo.into_iter().rev() {
                self.index.last_attempt[p as usize] = prev;
            }
            return Err(e);
        }
        for f in &facts {
            self.index.add_attempt(f);
            if let Some(keys) = self.long_chains.get_mut(&f.problem) {
                keys.insert(attempt_key(f.stage, f.sample_index), f.loc);
            }
        }
        Ok(())
    }

    /// Mark `stage` finished for these problems (durable when it returns).
    pub fn finish_stage(&mut self, ids: &[&str], stage: u8) -> Result<()> {
        self.check_writable()?;
        if stage as usize >= N_STAGES {
            return Err(Error::Msg(format!(
                "stage code {stage} unknown; stages are self, guided, hinted"
            )));
        }
        let bit = 1u8 << stage;
        let mut ords: Vec<u32> = self
            .ordinals("finish_stage", ids)?
            .into_iter()
            .filter(|&p| self.index.finished[p as usize] & bit == 0)
            .collect();
        ords.sort_unstable();
        ords.dedup();
        for chunk in ords.chunks(1 << 20) {
            let size = 2 * FRAME_HEADER + 12 + 8 + 4 * chunk.len();
            self.ensure_room(size)?;
            self.buf.clear();
            let s = begin_frame(&mut self.buf, K_FINISH);
            self.buf.extend_from_slice(&[stage, 0, 0, 0]);
            self.buf
                .extend_from_slice(&(chunk.len() as u32).to_le_bytes());
            for &p in chunk {
                self.buf.extend_from_slice(&p.to_le_bytes());
            }
            end_frame(&mut self.buf, s);
            self.push_commit(1);
            self.append_buf()?;
            for &p in chunk {
                self.index.finished[p as usize] |= bit;
            }
        }
        Ok(())
    }

    /// Ids of problems that still need `stage`, in ledger order.
    pub fn pending(&self, stage: u8) -> Vec<u32> {
        self.index.pending(stage)
    }

    pub fn problem_id(&self, p: u32) -> &str {
        self.index.id(p)
    }

    pub fn lookup(&self, id: &str) -> Option<u32> {
        self.index.lookup(id)
    }

    /// The segment holding the frame at `loc`, and the frame's offset in it.
    fn frame_at(&self, loc: Loc) -> Result<(&Segment, u64)> {
        let (num, off) = (loc_seg(loc), loc_offset(loc));
        match self.segs.get((num as usize).wrapping_sub(1)) {
            Some(s) if s.num == num && off + FRAME_HEADER as u64 <= s.len => Ok((s, off)),
            _ => Err(Error::Msg(format!(
                "internal: location {loc:#x} is outside the ledger"
            ))),
        }
    }

    /// Read and check the frame at `loc`; returns its payload.
    fn read_frame(&self, loc: Loc, kind: u8, scratch: &mut Vec<u8>) -> Result<()> {
        let (seg, off) = self.frame_at(loc)?;
        let mut h = [0u8; FRAME_HEADER];
        seg.read_at(&mut h, off)?;
        let len = seg.frame_len(off, &h, kind)?;
        scratch.resize(len, 0);
        seg.read_at(scratch, off + FRAME_HEADER as u64)?;
        seg.check_payload(off, &h, scratch)
    }

    /// The reference (expert solution) of problem `p`.
    pub fn reference(&self, p: u32) -> Result<String> {
        let mut b = Vec::new();
        self.read_frame(self.index.ref_loc[p as usize], K_PROBLEM, &mut b)?;
        let il = rd_u32(&b, 0) as usize;
        Ok(String::from_utf8_lossy(&b[8 + il..]).into_owned())
    }

    /// Read and check the frames at `locs` (of `kind`), in file order
    /// through a 1 MiB window so that many small frames cost few reads.
    /// Returns all payloads concatenated and each one's (start, end) in
    /// the order of `locs`.
    fn read_many(&self, locs: &[Loc], kind: u8) -> Result<(Vec<u8>, Vec<Span>)> {
        const WINDOW: usize = 1 << 20;
        let mut order: Vec<usize> = (0..locs.len()).collect();
        order.sort_unstable_by_key(|&i| locs[i]);
        let mut out = Vec::new();
        let mut spans = vec![(0usize, 0usize); locs.len()];
        let mut win: Vec<u8> = Vec::new();
        let (mut win_seg, mut win_start) = (0u32, 0u64);
        let mut big = Vec::new();
        for i in order {
            let (seg, off) = self.frame_at(locs[i])?;
            let num = seg.num;
            let in_window = |start: u64, len: usize, ws: u32, wst: u64, wl: usize| {
                ws == num && start >= wst && start + len as u64 <= wst + wl as u64
            };
            // the window: up to WINDOW bytes from this frame on
            let reload = |win: &mut Vec<u8>| {
                win.resize((WINDOW as u64).min(seg.len - off) as usize, 0);
                seg.read_at(win, off)
            };
            if !in_window(off, FRAME_HEADER, win_seg, win_start, win.len()) {
                reload(&mut win)?;
                (win_seg, win_start) = (num, off);
            }
            let h0 = (off - win_start) as usize;
            let len = seg.frame_len(off, &win[h0..h0 + FRAME_HEADER], kind)?;
            let mut header = [0u8; FRAME_HEADER];
            header.copy_from_slice(&win[h0..h0 + FRAME_HEADER]);
            let payload: &[u8] = if FRAME_HEADER + len > WINDOW {
                big.resize(len, 0);
                seg.read_at(&mut big, off + FRAME_HEADER as u64)?;
                &big
            } else {
                if !in_window(off, FRAME_HEADER + len, win_seg, win_start, win.len()) {
                    reload(&mut win)?;
                    win_start = off;
                }
                let p0 = (off - win_start) as usize + FRAME_HEADER;
                &win[p0..p0 + len]
            };
            seg.check_payload(off, &header, payload)?;
            spans[i] = (out.len(), out.len() + len);
            out.extend_from_slice(payload);
        }
        Ok((out, spans))
    }

    /// References of problems `ps`: all bytes and n + 1 offsets.
    pub fn references(&self, ps: &[u32]) -> Result<(Vec<u8>, Vec<i64>)> {
        let locs: Vec<Loc> = ps.iter().map(|&p| self.index.ref_loc[p as usize]).collect();
        let (buf, spans) = self.read_many(&locs, K_PROBLEM)?;
        let mut data = Vec::with_capacity(buf.len());
        let mut off = Vec::with_capacity(ps.len() + 1);
        off.push(0i64);
        for (a, b) in spans {
            let il = rd_u32(&buf, a) as usize;
            data.extend_from_slice(&buf[a + 8 + il..b]);
            off.push(data.len() as i64);
        }
        Ok((data, off))
    }

    /// Read attempts at these locations into columns.
    pub fn read_locs(&self, locs: &[Loc]) -> Result<Columns> {
        let mut cols = Columns::new(locs.len());
        let (buf, spans) = self.read_many(locs, K_ATTEMPT)?;
        for (&loc, (a, b)) in locs.iter().zip(spans) {
            let payload = &buf[a..b];
            let h = AttemptHead::read(payload).ok_or_else(|| Error::Corrupt {
                path: self.dir.display().to_string(),
                offset: loc_offset(loc),
                detail: "attempt record sizes do not add up".into(),
                fix: "reopen the ledger".into(),
            })?;
            cols.push(&h, payload);
        }
        Ok(cols)
    }

    /// Locations of every live attempt of problem `p`, oldest first.
    pub fn attempt_locs(&self, p: u32) -> Result<Vec<Loc>> {
        Ok(self.chain(p)?.into_iter().rev().map(|c| c.0).collect())
    }

    /// Every attempt of problem `p`, oldest first.
    pub fn attempts(&self, p: u32) -> Result<Columns> {
        let locs = self.attempt_locs(p)?;
        self.read_locs(&locs)
    }

    pub fn assign(&self, sel: Selection, seed: u64) -> index::Assigned {
        self.index.assign(sel, seed)
    }

    /// Locations of the chosen attempts (0 for expert rows).
    pub fn chosen_locs(&self, a: &index::Assigned) -> Vec<Loc> {
        a.choice
            .iter()
            .map(|&c| {
                if c == NONE {
                    0
                } else {
                    self.index.cands.loc[c as usize]
                }
            })
            .collect()
    }

    pub fn stats(&self, sel: Selection, seed: u64) -> Stats {
        let ix = &self.index;
        let n = ix.len();
        let a = ix.assign(sel, seed);
        let mut tiers = vec![(0u64, 0f64, 0u64); 4];
        for p in 0..n {
            let t = a.tier[p] as usize;
            tiers[t].0 += 1;
            let c = a.choice[p];
            if c != NONE && ix.cands.stage[c as usize] & 0x80 != 0 {
                let s = ix.cands.score[c as usize];
                if s.is_finite() {
                    tiers[t].1 += s as f64;
                    tiers[t].2 += 1;
                }
            }
        }
        let stages = (0..N_STAGES)
            .map(|s| {
                let bit = 1u8 << s;
                let tried = ix.tried.iter().filter(|&&b| b & bit != 0).count() as u64;
                let solved = ix.solved.iter().filter(|&&b| b & bit != 0).count() as u64;
                (STAGE_NAMES[s].to_string(), ix.counts[s], tried, solved)
            })
            .collect();
        let finished = (0..N_STAGES)
            .map(|s| {
                let bit = 1u8 << s;
                (
                    STAGE_NAMES[s].to_string(),
                    ix.finished.iter().filter(|&&b| b & bit != 0).count() as u64,
                )
            })
            .collect();
        Stats {
            problems: n as u64,
            attempts: ix.counts.iter().map(|c| c.attempts).sum(),
            stages,
            tiers: tiers
                .into_iter()
                .enumerate()
                .map(|(t, (k, sum, m))| {
                    (
                        tier_name(t as u8).to_string(),
                        k,
                        if m > 0 { sum / m as f64 } else { f64::NAN },
                        m,
                    )
                })
                .collect(),
            finished,
            fingerprinted: (0..n as u32)
                .filter(|&p| ix.fingerprint(p).is_some())
                .count() as u64,
            set_aside_problems: ix.set_aside_problems,
            set_aside_attempts: ix.set_aside_attempts,
            index_bytes: ix.memory_bytes() as u64,
            segments: self.segs.len() as u64,
            disk_bytes: self.segs.iter().map(|s| s.len).sum(),
        }
    }

    /// Walk every committed frame in log order.
    fn for_each_frame(&self, mut f: impl FnMut(u8, &[u8]) -> Result<()>) -> Result<()> {
        let mut data = Vec::new();
        for seg in &self.segs {
            data.clear();
            data.resize(seg.len as usize, 0);
            seg.read_at(&mut data, 0)?;
            let mut pos = SEG_HEADER;
            while pos < data.len() {
                let fr = check_frame(&data, pos).map_err(|e| Error::Corrupt {
                    path: seg.path.display().to_string(),
                    offset: pos as u64,
                    detail: format!("{e:?}"),
                    fix: "the file changed after it was opened; reopen the ledger".into(),
                })?;
                f(fr.kind, &data[fr.payload..fr.next])?;
                pos = fr.next;
            }
        }
        Ok(())
    }

    /// Merge ledgers written by separate workers into a new ledger at `out`:
    /// problems in input order (a problem in several inputs must have the
    /// same reference), then each input's attempts and finished stages in its
    /// own record order. The merge is built in a temporary sibling directory
    /// and renamed to `out` only when complete: a failed merge leaves `out`
    /// as it was, so the same command can simply be run again.
    pub fn merge(inputs: &[PathBuf], out: &Path) -> Result<Vec<String>> {
        if out.exists() && fs::read_dir(out).map_err(|e| io(out, e))?.next().is_some() {
            return Err(Error::Msg(format!(
                "merge output {} exists and is not empty; pass a new path",
                out.display()
            )));
        }
        let name = out
            .file_name()
            .ok_or_else(|| Error::Msg(format!("merge output {} has no name", out.display())))?;
        let tmp = out.with_file_name(format!(
            ".{}.merging-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&tmp);
        match Self::merge_into(inputs, &tmp) {
            Ok(warnings) => {
                if out.exists() {
                    fs::remove_dir(out).map_err(|e| io(out, e))?;
                }
                fs::rename(&tmp, out).map_err(|e| io(out, e))?;
                let parent = out.parent().filter(|p| !p.as_os_str().is_empty());
                sync_dir(parent.unwrap_or(Path::new(".")))?;
                Ok(warnings)
            }
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                Err(e)
            }
        }
    }

    fn merge_into(inputs: &[PathBuf], out: &Path) -> Result<Vec<String>> {
        let mut dst = Ledger::open(out, &OpenOptions2::default())?;
        let mut warnings = Vec::new();
        for path in inputs {
            let src = Ledger::open(
                path,
                &OpenOptions2 {
                    readonly: true,
                    create: false,
                    ..Default::default()
                },
            )?;
            warnings.extend(src.warnings.iter().cloned());
            // problems first (in chunks), so attempts can refer to them
            let n = src.len() as u32;
            let mut start = 0u32;
            while start < n {
                let end = (start + 4096).min(n);
                let refs: Vec<String> = (start..end)
                    .map(|p| src.reference(p))
                    .collect::<Result<_>>()?;
                let ids: Vec<&str> = (start..end).map(|p| src.problem_id(p)).collect();
                let rr: Vec<&str> = refs.iter().map(|s| s.as_str()).collect();
                dst.add_problems(&ids, &rr)
                    .map_err(|e| Error::Msg(format!("merging {}: {e}", path.display())))?;
                start = end;
            }
            let mut batch: Vec<Vec<u8>> = Vec::new();
            let mut batch_bytes = 0usize;
            let flush = |dst: &mut Ledger, batch: &mut Vec<Vec<u8>>| -> Result<()> {
                let heads: Vec<AttemptHead> = batch
                    .iter()
                    .map(|b| AttemptHead::read(b).expect("checked on open"))
                    .collect();
                let ins: Vec<AttemptIn> = batch
                    .iter()
                    .zip(&heads)
                    .map(|(b, h)| attempt_in(src.problem_id(h.problem), h, b))
                    .collect::<Result<_>>()
                    .map_err(|e| Error::Msg(format!("merging {}: {e}", path.display())))?;
                dst.record(&ins)?;
                batch.clear();
                Ok(())
            };
            src.for_each_frame(|kind, pl| {
                match kind {
                    K_ATTEMPT => {
                        batch_bytes += pl.len();
                        batch.push(pl.to_vec());
                        if batch.len() >= 4096 || batch_bytes >= 32 << 20 {
                            flush(&mut dst, &mut batch)?;
                            batch_bytes = 0;
                        }
                    }
                    K_FINISH => {
                        flush(&mut dst, &mut batch)?;
                        batch_bytes = 0;
                        let ids: Vec<&str> = pl[8..]
                            .chunks_exact(4)
                            .map(|c| src.problem_id(rd_u32(c, 0)))
                            .collect();
                        dst.finish_stage(&ids, pl[0])?;
                    }
                    K_FINGERPRINT => {
                        let (ids, fps): (Vec<&str>, Vec<[u8; FP_LEN]>) = pl[4..]
                            .chunks_exact(FP_ENTRY)
                            .map(|e| {
                                let mut f = [0u8; FP_LEN];
                                f.copy_from_slice(&e[4..]);
                                (src.problem_id(rd_u32(e, 0)), f)
                            })
                            .unzip();
                        dst.set_fingerprints(&ids, &fps)?;
                    }
                    K_SET_ASIDE => {
                        flush(&mut dst, &mut batch)?;
                        batch_bytes = 0;
                        let entries = parse_set_aside(pl, src.len()).map_err(Error::Msg)?;
                        let ids: Vec<&str> =
                            entries.iter().map(|e| src.problem_id(e.problem)).collect();
                        dst.set_aside(&ids)?;
                    }
                    _ => {}
                }
                Ok(())
            })?;
            flush(&mut dst, &mut batch)?;
        }
        Ok(warnings)
    }
}

/// View a stored attempt payload as an [`AttemptIn`] (for merge). Text that is
/// not UTF-8 (only a damaged file that still passed its checksum can hold it)
/// is an error naming the attempt, never silently replaced.
fn attempt_in<'a>(problem_id: &'a str, h: &AttemptHead, b: &'a [u8]) -> Result<AttemptIn<'a>> {
    let AttemptParts {
        text,
        reason,
        tokens: token_ids,
        behavior,
        base,
    } = h.split(b);
    let utf8 = |field: &str, bytes: &'a [u8]| {
        std::str::from_utf8(bytes).map_err(|e| {
            Error::Msg(format!(
                "attempt {} of problem {problem_id:?}: its {field} is not UTF-8 ({e}); \
                 the attempts merged before it are kept, the file needs inspecting",
                h.sample_index
            ))
        })
    };
    Ok(AttemptIn {
        problem_id,
        stage: h.stage,
        sample_index: h.sample_index,
        correct: h.correct,
        text: utf8("text", text)?,
        reason: utf8("reason", reason)?,
        token_ids,
        behavior,
        base,
    })
}

#[cfg(test)]
mod tests;
