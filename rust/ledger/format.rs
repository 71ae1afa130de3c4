//! On-disk format of ledger segments.
//!
//! A ledger is a directory of append-only segment files
//! `seg-00000001.ldg`, `seg-00000002.ldg`, ... Each segment starts with a
//! 16-byte header (`OPSFTLG1`, format version u32, segment number u32) and
//! then holds frames:
//!
//! ```text
//! frame   = magic [0xFE 0xFF] | kind u8 | flags u8 | len u32 | crc u32 | payload (len bytes)
//! crc     = CRC32C(first 8 header bytes ++ payload)     (so a damaged length is caught too)
//! ```
//!
//! All integers are little-endian. The magic bytes 0xFE/0xFF never occur in
//! UTF-8 text, which keeps resynchronisation (looking for a valid frame after
//! a bad one) from matching inside attempt texts.
//!
//! Kinds: PROBLEM, ATTEMPT, FINISH, COMMIT, FINGERPRINT and SET_ASIDE. Every
//! mutating call (one `record`, `add_problems`, `finish_stage` or `set_aside`)
//! writes its frames followed by
//! one COMMIT frame carrying the number of frames it seals, in one `write`
//! and one `fdatasync`. On replay, frames count only once their COMMIT is
//! read, so a batch is either wholly present or wholly absent.
//!
//! Attempt payload (header 40 bytes, then the variable parts):
//!
//! ```text
//! problem u32 | sample_index u32 | stage u8 | correct u8 | has_base u8 | 0 u8
//! ntok u32 | text_len u32 | reason_len u32 | score f32 | prev_loc u64 | 0 u32
//! text (UTF-8) | reason (UTF-8) | token_ids u32[ntok] | behavior f32[ntok] | base f32[ntok]?
//! ```
//!
//! Encoding choice: texts are raw UTF-8, token ids raw u32 and log-probs raw
//! float32, all little-endian. float32 is what the engines produce and what
//! the losses consume; a lossy f16/bf16 copy would change importance
//! weights (an f16 log-prob of -12 is off by up to 0.004, a 0.4% error in
//! exp(logp - blogp) per token, compounding over a sequence), and the
//! ledger is the only copy of hours of GPU work. Raw arrays also decode with
//! a memcpy and no CPU spent on compression on the record path. Against JSON
//! (about 10-20 bytes per float) this is 4 bytes per value.
//! `prev_loc` links the attempts of one problem backwards on disk, so the
//! in-memory index needs only the newest location per problem.
//!
//! A PROBLEM frame for an id already present replaces its reference (written
//! only together with a SET_ASIDE of that problem, when its text changed).
//!
//! FINGERPRINT payload: `count u32 | (problem u32 | digest [u8; 16]) * count`.
//!
//! SET_ASIDE payload: `count u32 | entry * count`, entry (36 bytes) =
//! `problem u32 | attempts u32[3] | correct u32[3] | old_head u64`: the
//! problem's attempts (counted per stage) leave the live view and its stage
//! bits are cleared; the records stay on disk, reachable from `old_head`
//! through `prev_loc`, and attempts recorded later start a new chain.

use super::crc::{crc32c, crc32c_append};

pub const SEG_MAGIC: &[u8; 8] = b"OPSFTLG1";
pub const FORMAT_VERSION: u32 = 1;
pub const SEG_HEADER: usize = 16;
pub const FRAME_MAGIC: [u8; 2] = [0xFE, 0xFF];
pub const FRAME_HEADER: usize = 12;
/// Largest payload one frame may carry (one attempt or one chunk of a call).
pub const MAX_PAYLOAD: usize = 1 << 30;

pub const K_PROBLEM: u8 = 1;
pub const K_ATTEMPT: u8 = 2;
pub const K_FINISH: u8 = 3;
pub const K_COMMIT: u8 = 4;
pub const K_FINGERPRINT: u8 = 5;
pub const K_SET_ASIDE: u8 = 6;

/// Bytes of a problem fingerprint (a 128-bit digest).
pub const FP_LEN: usize = 16;
pub const FP_ENTRY: usize = 4 + FP_LEN;
pub const SET_ASIDE_ENTRY: usize = 36;

pub const ATTEMPT_HEAD: usize = 40;

/// A location: segment number in the top 24 bits, byte offset in the low 40.
pub type Loc = u64;
pub const OFFSET_BITS: u32 = 40;

pub fn make_loc(seg: u32, offset: u64) -> Loc {
    ((seg as u64) << OFFSET_BITS) | offset
}

pub fn loc_seg(loc: Loc) -> u32 {
    (loc >> OFFSET_BITS) as u32
}

pub fn loc_offset(loc: Loc) -> u64 {
    loc & ((1u64 << OFFSET_BITS) - 1)
}

pub fn segment_header(num: u32) -> [u8; SEG_HEADER] {
    let mut h = [0u8; SEG_HEADER];
    h[..8].copy_from_slice(SEG_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&num.to_le_bytes());
    h
}

pub fn segment_name(num: u32) -> String {
    format!("seg-{num:08}.ldg")
}

/// Parse `seg-NNNNNNNN.ldg`.
pub fn parse_segment_name(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("seg-")?.strip_suffix(".ldg")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Start a frame of `kind` in `buf`; returns its start for [`end_frame`].
pub fn begin_frame(buf: &mut Vec<u8>, kind: u8) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[
        FRAME_MAGIC[0],
        FRAME_MAGIC[1],
        kind,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    ]);
    start
}

/// Fill in the length and checksum of the frame begun at `start`.
pub fn end_frame(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start - FRAME_HEADER) as u32;
    buf[start + 4..start + 8].copy_from_slice(&len.to_le_bytes());
    let crc = crc32c_append(crc32c(&buf[start..start + 8]), &buf[start + FRAME_HEADER..]);
    buf[start + 8..start + 12].copy_from_slice(&crc.to_le_bytes());
}

/// A frame that passed its checks.
#[derive(Clone, Copy, Debug)]
pub struct Frame {
    pub kind: u8,
    /// Offset of the payload in the buffer.
    pub payload: usize,
    pub len: usize,
    /// Offset just past the frame.
    pub next: usize,
}

/// Why the bytes at some offset are not a valid frame.
#[derive(Debug, PartialEq, Eq)]
pub enum BadFrame {
    /// Fewer bytes left than the header or the declared length needs.
    Truncated,
    /// Magic, kind or length field impossible, or checksum mismatch.
    Invalid(&'static str),
}

pub fn check_frame(buf: &[u8], pos: usize) -> Result<Frame, BadFrame> {
    if buf.len() - pos < FRAME_HEADER {
        return Err(BadFrame::Truncated);
    }
    let h = &buf[pos..pos + FRAME_HEADER];
    if h[0..2] != FRAME_MAGIC {
        return Err(BadFrame::Invalid("bad frame magic"));
    }
    let kind = h[2];
    if !(K_PROBLEM..=K_SET_ASIDE).contains(&kind) || h[3] != 0 {
        return Err(BadFrame::Invalid("unknown frame kind"));
    }
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    if len > MAX_PAYLOAD {
        return Err(BadFrame::Invalid("frame length over the limit"));
    }
    let payload = pos + FRAME_HEADER;
    if buf.len() - payload < len {
        return Err(BadFrame::Truncated);
    }
    let want = u32::from_le_bytes([h[8], h[9], h[10], h[11]]);
    let got = crc32c_append(crc32c(&h[0..8]), &buf[payload..payload + len]);
    if want != got {
        return Err(BadFrame::Invalid("checksum mismatch"));
    }
    Ok(Frame {
        kind,
        payload,
        len,
        next: payload + len,
    })
}

/// First offset at or after `from` where a whole valid frame starts.
pub fn resync(buf: &[u8], from: usize) -> Option<usize> {
    let mut p = from;
    while p + FRAME_HEADER <= buf.len() {
        match buf[p..].windows(2).position(|w| w == FRAME_MAGIC) {
            None => return None,
            Some(i) => {
                p += i;
                if check_frame(buf, p).is_ok() {
                    return Some(p);
                }
                p += 1;
            }
        }
    }
    None
}

pub fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub fn rd_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// The fixed part of an attempt payload.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttemptHead {
    pub problem: u32,
    pub sample_index: u32,
    pub stage: u8,
    pub correct: bool,
    pub has_base: bool,
    pub ntok: u32,
    pub text_len: u32,
    pub reason_len: u32,
    pub score: f32,
    pub prev: Loc,
}

/// The variable-length fields of an attempt payload, in their stored order.
pub struct AttemptParts<'a> {
    pub text: &'a [u8],
    pub reason: &'a [u8],
    /// u32 little-endian token ids
    pub tokens: &'a [u8],
    /// f32 little-endian behaviour log-probs
    pub behavior: &'a [u8],
    /// f32 little-endian base log-probs, when stored
    pub base: Option<&'a [u8]>,
}

impl AttemptHead {
    /// Slice a payload whose size [`AttemptHead::read`] has checked into its fields.
    pub fn split<'a>(&self, payload: &'a [u8]) -> AttemptParts<'a> {
        let mut at = ATTEMPT_HEAD;
        let mut take = |n: usize| {
            let s = &payload[at..at + n];
            at += n;
            s
        };
        let text = take(self.text_len as usize);
        let reason = take(self.reason_len as usize);
        let nb = 4 * self.ntok as usize;
        let tokens = take(nb);
        let behavior = take(nb);
        let base = if self.has_base { Some(take(nb)) } else { None };
        AttemptParts {
            text,
            reason,
            tokens,
            behavior,
            base,
        }
    }

    pub fn payload_len(&self) -> usize {
        let arrays = if self.has_base { 3 } else { 2 };
        ATTEMPT_HEAD
            + self.text_len as usize
            + self.reason_len as usize
            + 4 * arrays * self.ntok as usize
    }

    pub fn write(&self, buf: &mut Vec<u8>) {
        buf.extend_from_slice(&self.problem.to_le_bytes());
        buf.extend_from_slice(&self.sample_index.to_le_bytes());
        buf.extend_from_slice(&[self.stage, self.correct as u8, self.has_base as u8, 0]);
        buf.extend_from_slice(&self.ntok.to_le_bytes());
        buf.extend_from_slice(&self.text_len.to_le_bytes());
        buf.extend_from_slice(&self.reason_len.to_le_bytes());
        buf.extend_from_slice(&self.score.to_le_bytes());
        buf.extend_from_slice(&self.prev.to_le_bytes());
        buf.extend_from_slice(&[0u8; 4]);
    }

    /// Decode and check that the declared sizes add up to `payload.len()`.
    pub fn read(payload: &[u8]) -> Option<AttemptHead> {
        if payload.len() < ATTEMPT_HEAD {
            return None;
        }
        let p = payload;
        if p[8] > 2 || p[9] > 1 || p[10] > 1 || p[11] != 0 {
            return None;
        }
        let h = AttemptHead {
            problem: rd_u32(p, 0),
            sample_index: rd_u32(p, 4),
            stage: p[8],
            correct: p[9] == 1,
            has_base: p[10] == 1,
            ntok: rd_u32(p, 12),
            text_len: rd_u32(p, 16),
            reason_len: rd_u32(p, 20),
            score: f32::from_le_bytes([p[24], p[25], p[26], p[27]]),
            prev: rd_u64(p, 28),
        };
        (h.payload_len() == payload.len()).then_some(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_roundtrip_and_damage() {
        let mut buf = vec![0u8; 5];
        let s = begin_frame(&mut buf, K_PROBLEM);
        buf.extend_from_slice(b"hello");
        end_frame(&mut buf, s);
        let f = check_frame(&buf, 5).unwrap();
        assert_eq!((f.kind, f.len, f.next), (K_PROBLEM, 5, buf.len()));
        assert_eq!(&buf[f.payload..f.next], b"hello");
        assert_eq!(
            check_frame(&buf[..buf.len() - 1], 5).unwrap_err(),
            BadFrame::Truncated
        );
        for i in 5..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x10;
            assert!(check_frame(&bad, 5).is_err(), "flip at {i} not caught");
        }
        assert_eq!(resync(&buf, 0), Some(5));
        assert_eq!(resync(&buf, 6), None);
    }

    #[test]
    fn attempt_head_roundtrip() {
        let h = AttemptHead {
            problem: 7,
            sample_index: 3,
            stage: 1,
            correct: true,
            has_base: true,
            ntok: 2,
            text_len: 3,
            reason_len: 0,
            score: -0.5,
            prev: make_loc(2, 99),
        };
        let mut b = Vec::new();
        h.write(&mut b);
        assert_eq!(b.len(), ATTEMPT_HEAD);
        b.resize(h.payload_len(), 0);
        assert_eq!(AttemptHead::read(&b), Some(h));
        b.push(0);
        assert_eq!(AttemptHead::read(&b), None);
        assert_eq!(loc_seg(h.prev), 2);
        assert_eq!(loc_offset(h.prev), 99);
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("seg-1.ldg"), None);
    }
}
