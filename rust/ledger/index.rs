//! The in-memory index: problems, stage bits, and the correct attempts
//! (the only ones tier assignment can choose). Texts and arrays stay on disk.
//!
//! Memory per problem: id bytes + 4 (id end) + 16-32 (hash slots) + 8
//! (reference location) + 8 (newest attempt location) + 3 (stage bits) + 8
//! (a one-word filter of its attempt keys), plus 16 once any problem has a
//! fingerprint, plus 29 bytes per *correct* attempt. Incorrect attempts cost
//! nothing here: `attempts()` follows the `prev_loc` chain on disk.

use super::format::{Loc, FP_LEN};

pub const N_STAGES: usize = 3;
pub const STAGE_NAMES: [&str; N_STAGES] = ["self", "guided", "hinted"];
pub const EXPERT: u8 = 3;
pub const NONE: u32 = u32::MAX;
const EMPTY: u64 = u64::MAX;

pub fn stage_code(name: &str) -> Option<u8> {
    STAGE_NAMES.iter().position(|s| *s == name).map(|i| i as u8)
}

pub fn tier_name(code: u8) -> &'static str {
    match code {
        0..=2 => STAGE_NAMES[code as usize],
        _ => "expert",
    }
}

/// Stable 64-bit hash of a problem id (never changes across versions or
/// platforms: the `random` selection depends on it).
pub fn id_hash(b: &[u8]) -> u64 {
    // FNV-1a over the bytes, then a splitmix64 finaliser.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    mix64(h)
}

pub fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Correct attempts, struct-of-arrays, in record order.
#[derive(Default, Clone)]
pub struct Candidates {
    pub problem: Vec<u32>,
    /// stage in the low 2 bits, bit 7 set when `score` comes from base log-probs
    pub stage: Vec<u8>,
    pub sample: Vec<u32>,
    pub score: Vec<f32>,
    pub ntok: Vec<u32>,
    pub text_len: Vec<u32>,
    pub loc: Vec<Loc>,
}

impl Candidates {
    pub fn len(&self) -> usize {
        self.problem.len()
    }

    pub fn is_empty(&self) -> bool {
        self.problem.is_empty()
    }
}

/// The heap a struct of vectors holds, and giving back what it does not use.
trait Heap {
    /// Bytes of heap held (capacities, not lengths).
    fn heap_bytes(&self) -> usize;
    fn shrink(&mut self);
}

impl<T> Heap for Vec<T> {
    fn heap_bytes(&self) -> usize {
        self.capacity() * std::mem::size_of::<T>()
    }

    fn shrink(&mut self) {
        self.shrink_to_fit();
    }
}

/// `Heap` for a struct from the one list of its fields that hold heap.
macro_rules! heap_of_fields {
    ($ty:ty: $($field:ident),+ $(,)?) => {
        impl Heap for $ty {
            fn heap_bytes(&self) -> usize {
                0 $(+ self.$field.heap_bytes())+
            }

            fn shrink(&mut self) {
                $(self.$field.shrink();)+
            }
        }
    };
}

heap_of_fields!(Candidates: problem, stage, sample, score, ntok, text_len, loc);

#[derive(Default, Clone, Copy, Debug, PartialEq)]
pub struct StageCounts {
    pub attempts: u64,
    pub correct: u64,
}

#[derive(Default)]
pub struct Index {
    id_bytes: Vec<u8>,
    id_end: Vec<u32>,
    table: Vec<u64>,
    pub ref_loc: Vec<Loc>,
    pub last_attempt: Vec<Loc>,
    pub finished: Vec<u8>,
    pub solved: Vec<u8>,
    pub tried: Vec<u8>,
    pub cands: Candidates,
    pub counts: [StageCounts; N_STAGES],
    /// per problem: one bit per (stage, sample_index) key hash of its live
    /// attempts, so `record` looks for an earlier attempt with the same key
    /// (on disk) only when the bit is set
    pub key_bits: Vec<u64>,
    /// per problem fingerprint (all zeros = none); empty until one is set
    pub fp: Vec<[u8; FP_LEN]>,
    /// problems whose attempts were set aside (counted once per set-aside)
    /// and how many attempts that set aside, in total
    pub set_aside_problems: u64,
    pub set_aside_attempts: u64,
}

/// The bit of `key_bits` for an attempt key.
pub fn key_bit(stage: u8, sample_index: u32) -> u64 {
    1u64 << (mix64(((stage as u64) << 32) | sample_index as u64) & 63)
}

/// What a set-aside removes from the live view of one problem (the attempts
/// stay on disk): its attempt counts per stage.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SetAside {
    pub problem: u32,
    pub counts: [StageCounts; N_STAGES],
}

/// Per-attempt facts the index keeps.
#[derive(Clone, Copy, Debug)]
pub struct AttemptFacts {
    pub problem: u32,
    pub stage: u8,
    pub correct: bool,
    pub sample_index: u32,
    pub score: f32,
    pub score_from_base: bool,
    pub ntok: u32,
    pub text_len: u32,
    pub loc: Loc,
}

impl Index {
    pub fn len(&self) -> usize {
        self.id_end.len()
    }

    pub fn is_empty(&self) -> bool {
        self.id_end.is_empty()
    }

    pub fn id(&self, i: u32) -> &str {
        let i = i as usize;
        let start = if i == 0 {
            0
        } else {
            self.id_end[i - 1] as usize
        };
        // SAFETY-free: ids are only ever inserted from &str.
        std::str::from_utf8(&self.id_bytes[start..self.id_end[i] as usize]).unwrap_or("")
    }

    fn id_bytes_of(&self, i: u32) -> &[u8] {
        let i = i as usize;
        let start = if i == 0 {
            0
        } else {
            self.id_end[i - 1] as usize
        };
        &self.id_bytes[start..self.id_end[i] as usize]
    }

    /// Slot entries pack the ordinal (low 32 bits) with the hash's high 32
    /// bits as a tag, so a probe compares ids only when the tags agree (ids
    /// such as `problem-00000001` share long prefixes; comparing them on
    /// every probe made a 1M-problem replay spend half its time in memcmp).
    fn find(&self, id: &[u8], h: u64) -> Result<u32, usize> {
        let mask = self.table.len() - 1;
        let tag = h >> 32;
        let mut slot = h as usize & mask;
        loop {
            let v = self.table[slot];
            if v == EMPTY {
                return Err(slot);
            }
            if v >> 32 == tag && self.id_bytes_of(v as u32) == id {
                return Ok(v as u32);
            }
            slot = (slot + 1) & mask;
        }
    }

    pub fn lookup(&self, id: &str) -> Option<u32> {
        if self.table.is_empty() {
            return None;
        }
        self.find(id.as_bytes(), id_hash(id.as_bytes())).ok()
    }

    fn place(&mut self, i: u32) {
        let h = id_hash(self.id_bytes_of(i));
        let mask = self.table.len() - 1;
        let mut slot = h as usize & mask;
        while self.table[slot] != EMPTY {
            slot = (slot + 1) & mask;
        }
        self.table[slot] = (h >> 32) << 32 | i as u64;
    }

    fn grow_table(&mut self, want: usize) {
        // load factor <= 1/2: a miss probes ~2.5 slots on average
        let need = (want * 2).next_power_of_two().max(16);
        if need <= self.table.len() {
            return;
        }
        self.table = vec![EMPTY; need];
        for i in 0..self.len() as u32 {
            self.place(i);
        }
    }

    /// Reserve room for `extra` more problems (avoids repeated rehashing).
    pub fn reserve(&mut self, extra: usize) {
        self.grow_table(self.len() + extra);
    }

    /// The ordinal of problem `id`, adding it (with its reference
    /// location) when new; the bool says whether it was added.
    pub fn insert(&mut self, id: &str, ref_loc: Loc) -> (u32, bool) {
        self.grow_table(self.len() + 1);
        let h = id_hash(id.as_bytes());
        match self.find(id.as_bytes(), h) {
            Ok(p) => (p, false),
            Err(slot) => {
                let i = self.len() as u32;
                self.id_bytes.extend_from_slice(id.as_bytes());
                self.id_end.push(self.id_bytes.len() as u32);
                self.ref_loc.push(ref_loc);
                self.last_attempt.push(0);
                self.finished.push(0);
                self.solved.push(0);
                self.tried.push(0);
                self.key_bits.push(0);
                if !self.fp.is_empty() {
                    self.fp.push([0; FP_LEN]);
                }
                self.table[slot] = (h >> 32) << 32 | i as u64;
                (i, true)
            }
        }
    }

    /// Add a problem the caller checked is new; returns its ordinal.
    pub fn push_problem(&mut self, id: &str, ref_loc: Loc) -> u32 {
        let (i, added) = self.insert(id, ref_loc);
        debug_assert!(added, "push_problem of an existing id");
        i
    }

    pub fn id_bytes_total(&self) -> usize {
        self.id_bytes.len()
    }

    pub fn add_attempt(&mut self, a: &AttemptFacts) {
        let p = a.problem as usize;
        let bit = 1u8 << a.stage;
        self.last_attempt[p] = a.loc;
        self.tried[p] |= bit;
        self.key_bits[p] |= key_bit(a.stage, a.sample_index);
        let c = &mut self.counts[a.stage as usize];
        c.attempts += 1;
        if a.correct {
            c.correct += 1;
            self.solved[p] |= bit;
            let cs = &mut self.cands;
            cs.problem.push(a.problem);
            cs.stage
                .push(a.stage | if a.score_from_base { 0x80 } else { 0 });
            cs.sample.push(a.sample_index);
            cs.score.push(a.score);
            cs.ntok.push(a.ntok);
            cs.text_len.push(a.text_len);
            cs.loc.push(a.loc);
        }
    }

    /// The fingerprint of problem `p`, if one was recorded.
    pub fn fingerprint(&self, p: u32) -> Option<&[u8; FP_LEN]> {
        self.fp.get(p as usize).filter(|f| **f != [0; FP_LEN])
    }

    pub fn set_fingerprint(&mut self, p: u32, fp: &[u8; FP_LEN]) {
        if self.fp.is_empty() {
            self.fp = vec![[0; FP_LEN]; self.len()];
        }
        self.fp[p as usize] = *fp;
    }

    /// Drop these problems' attempts and stage bits from the live view:
    /// they start over as if never tried (their fingerprints are kept).
    pub fn set_aside(&mut self, entries: &[SetAside]) {
        if entries.is_empty() {
            return;
        }
        let mut gone = vec![false; self.len()];
        for e in entries {
            let p = e.problem as usize;
            gone[p] = true;
            self.last_attempt[p] = 0;
            self.key_bits[p] = 0;
            self.tried[p] = 0;
            self.solved[p] = 0;
            self.finished[p] = 0;
            let mut n = 0;
            for (c, d) in self.counts.iter_mut().zip(&e.counts) {
                c.attempts = c.attempts.saturating_sub(d.attempts);
                c.correct = c.correct.saturating_sub(d.correct);
                n += d.attempts;
            }
            self.set_aside_problems += 1;
            self.set_aside_attempts += n;
        }
        let cs = &mut self.cands;
        let keep: Vec<bool> = cs.problem.iter().map(|&p| !gone[p as usize]).collect();
        if keep.iter().all(|&k| k) {
            return;
        }
        fn retain<T: Copy>(v: &mut Vec<T>, keep: &[bool]) {
            let mut i = 0;
            v.retain(|_| {
                i += 1;
                keep[i - 1]
            });
        }
        retain(&mut cs.problem, &keep);
        retain(&mut cs.stage, &keep);
        retain(&mut cs.sample, &keep);
        retain(&mut cs.score, &keep);
        retain(&mut cs.ntok, &keep);
        retain(&mut cs.text_len, &keep);
        retain(&mut cs.loc, &keep);
    }

    /// Problems that still need `stage`: no correct attempt in an earlier
    /// stage and `stage` not finished.
    pub fn pending(&self, stage: u8) -> Vec<u32> {
        let earlier = (1u8 << stage) - 1;
        let bit = 1u8 << stage;
        (0..self.len())
            .filter(|&p| self.solved[p] & earlier == 0 && self.finished[p] & bit == 0)
            .map(|p| p as u32)
            .collect()
    }

    /// Tier of each problem: earliest stage with a correct attempt, else expert.
    pub fn tier(&self, p: usize) -> u8 {
        let s = self.solved[p];
        if s == 0 {
            EXPERT
        } else {
            s.trailing_zeros() as u8
        }
    }

    /// Bytes of heap held by the index (capacities, not lengths).
    pub fn memory_bytes(&self) -> usize {
        self.heap_bytes()
    }

    pub fn shrink(&mut self) {
        Heap::shrink(self);
    }
}

heap_of_fields!(Index: id_bytes, id_end, table, ref_loc, last_attempt, finished, solved, tried,
    key_bits, fp, cands);

/// How to choose among several correct attempts of the winning stage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    First,
    Random,
    Likeliest,
    Shortest,
}

impl Selection {
    pub fn parse(s: &str) -> Option<Selection> {
        Some(match s {
            "first" => Selection::First,
            "random" => Selection::Random,
            "likeliest" => Selection::Likeliest,
            "shortest" => Selection::Shortest,
            _ => return None,
        })
    }
}

/// Per problem (in ledger order): tier code and chosen candidate (NONE for expert).
pub struct Assigned {
    pub tier: Vec<u8>,
    pub choice: Vec<u32>,
}

fn score_key(s: f32) -> f32 {
    if s.is_nan() {
        f32::NEG_INFINITY
    } else {
        s
    }
}

impl Index {
    /// Choose one correct attempt per problem. A pure function of the
    /// records and `seed`: ties go to the lower sample index, then to the
    /// earlier record; `random` draws from a hash of (seed, problem id,
    /// stage, sample index), so it does not depend on record order.
    pub fn assign(&self, sel: Selection, seed: u64) -> Assigned {
        let n = self.len();
        let cs = &self.cands;
        let mut choice = vec![NONE; n];
        let rkey = |c: usize| -> u64 {
            let p = cs.problem[c];
            let h = mix64(seed ^ id_hash(self.id_bytes_of(p)));
            mix64(h ^ (((cs.stage[c] & 3) as u64) << 32 | cs.sample[c] as u64))
        };
        // is candidate a (later in record order) strictly better than b?
        let better = |a: usize, b: usize| -> bool {
            let (sa, sb) = (cs.stage[a] & 3, cs.stage[b] & 3);
            if sa != sb {
                return sa < sb;
            }
            let ord = match sel {
                Selection::First => std::cmp::Ordering::Equal,
                Selection::Likeliest => score_key(cs.score[b])
                    .partial_cmp(&score_key(cs.score[a]))
                    .unwrap(),
                Selection::Shortest => {
                    (cs.ntok[a], cs.text_len[a]).cmp(&(cs.ntok[b], cs.text_len[b]))
                }
                Selection::Random => rkey(a).cmp(&rkey(b)),
            };
            match ord {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => cs.sample[a] < cs.sample[b],
            }
        };
        for c in 0..cs.len() {
            let p = cs.problem[c] as usize;
            let cur = choice[p];
            if cur == NONE || better(c, cur as usize) {
                choice[p] = c as u32;
            }
        }
        let tier = choice
            .iter()
            .map(|&c| {
                if c == NONE {
                    EXPERT
                } else {
                    cs.stage[c as usize] & 3
                }
            })
            .collect();
        Assigned { tier, choice }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(
        problem: u32,
        stage: u8,
        correct: bool,
        sample: u32,
        score: f32,
        ntok: u32,
    ) -> AttemptFacts {
        AttemptFacts {
            problem,
            stage,
            correct,
            sample_index: sample,
            score,
            score_from_base: true,
            ntok,
            text_len: ntok,
            loc: 1000 + sample as u64,
        }
    }

    #[test]
    fn lookup_many() {
        let mut ix = Index::default();
        for i in 0..5000 {
            assert_eq!(ix.push_problem(&format!("p{i}"), 0), i);
        }
        for i in 0..5000 {
            assert_eq!(ix.lookup(&format!("p{i}")), Some(i));
            assert_eq!(ix.id(i), format!("p{i}"));
        }
        assert_eq!(ix.lookup("nope"), None);
        assert_eq!(ix.lookup(""), None);
    }

    #[test]
    fn tiers_and_selection() {
        let mut ix = Index::default();
        for id in ["a", "b", "c", "d"] {
            ix.push_problem(id, 0);
        }
        // a: self correct (two), b: self wrong, guided correct; c: nothing correct; d: guided+hinted
        ix.add_attempt(&facts(0, 0, true, 0, -2.0, 10));
        ix.add_attempt(&facts(0, 0, true, 1, -1.0, 5));
        ix.add_attempt(&facts(0, 1, true, 0, -0.1, 1));
        ix.add_attempt(&facts(1, 0, false, 0, -0.5, 3));
        ix.add_attempt(&facts(1, 1, true, 2, -3.0, 3));
        ix.add_attempt(&facts(2, 0, false, 0, 0.0, 3));
        ix.add_attempt(&facts(3, 2, true, 0, 0.0, 3));
        ix.add_attempt(&facts(3, 1, true, 5, -9.0, 3));
        let a = ix.assign(Selection::First, 0);
        assert_eq!(a.tier, vec![0, 1, EXPERT, 1]);
        assert_eq!(ix.cands.sample[a.choice[0] as usize], 0);
        let l = ix.assign(Selection::Likeliest, 0);
        assert_eq!(ix.cands.sample[l.choice[0] as usize], 1);
        let s = ix.assign(Selection::Shortest, 0);
        assert_eq!(ix.cands.sample[s.choice[0] as usize], 1);
        assert_eq!(ix.pending(0), vec![0, 1, 2, 3]);
        assert_eq!(ix.pending(1), vec![1, 2, 3]);
        ix.finished[1] |= 2;
        assert_eq!(ix.pending(1), vec![2, 3]);
        assert_eq!(ix.pending(2), vec![2]);
        assert_eq!(
            ix.counts[0],
            StageCounts {
                attempts: 4,
                correct: 2
            }
        );
    }

    #[test]
    fn random_depends_on_seed_not_order() {
        let build = |rev: bool| {
            let mut ix = Index::default();
            ix.push_problem("x", 0);
            let mut order: Vec<u32> = (0..16).collect();
            if rev {
                order.reverse();
            }
            for s in order {
                ix.add_attempt(&facts(0, 0, true, s, 0.0, 1));
            }
            ix
        };
        let (f, r) = (build(false), build(true));
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let pick_f = f.cands.sample[f.assign(Selection::Random, seed).choice[0] as usize];
            let pick_r = r.cands.sample[r.assign(Selection::Random, seed).choice[0] as usize];
            assert_eq!(pick_f, pick_r);
            seen.insert(pick_f);
        }
        assert!(
            seen.len() > 4,
            "random picks too few distinct samples: {seen:?}"
        );
    }
}
