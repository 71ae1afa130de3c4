use super::*;

/// A fresh directory of this test process, removed when it goes out of scope
/// (also when the test fails).
struct TmpDir(PathBuf);

impl std::ops::Deref for TmpDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TmpDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TmpDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tmpdir(name: &str) -> TmpDir {
    let d = std::env::temp_dir().join(format!("ledger-test-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    TmpDir(d)
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u32s(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

struct Owned {
    pid: String,
    stage: u8,
    sample: u32,
    correct: bool,
    text: String,
    toks: Vec<u8>,
    blp: Vec<u8>,
    base: Option<Vec<u8>>,
}

impl Owned {
    fn new(pid: &str, stage: u8, sample: u32, correct: bool, n: u32) -> Owned {
        let toks: Vec<u32> = (0..n).map(|i| i * 7 + sample).collect();
        let blp: Vec<f32> = (0..n).map(|i| -(i as f32) * 0.25 - sample as f32).collect();
        Owned {
            pid: pid.into(),
            stage,
            sample,
            correct,
            text: format!("answer {sample} to {pid} \u{00e9}"),
            toks: u32s(&toks),
            blp: f32s(&blp),
            base: (sample % 2 == 0).then(|| f32s(&blp.iter().map(|x| x - 1.0).collect::<Vec<_>>())),
        }
    }
    fn as_in(&self) -> AttemptIn<'_> {
        AttemptIn {
            problem_id: &self.pid,
            stage: self.stage,
            sample_index: self.sample,
            correct: self.correct,
            text: &self.text,
            reason: "r",
            token_ids: &self.toks,
            behavior: &self.blp,
            base: self.base.as_deref(),
        }
    }
}

fn writer(d: &Path) -> Ledger {
    Ledger::open(d, &OpenOptions2::default()).unwrap()
}

fn readonly() -> OpenOptions2 {
    OpenOptions2 {
        readonly: true,
        ..Default::default()
    }
}

fn reader(d: &Path) -> Ledger {
    Ledger::open(d, &readonly()).unwrap()
}

fn repairer(d: &Path) -> Ledger {
    let opts = OpenOptions2 {
        repair: true,
        ..Default::default()
    };
    Ledger::open(d, &opts).unwrap()
}

/// A writer whose segments roll every 4 KiB, so a few dozen attempts span several.
fn small_segments(d: &Path) -> Ledger {
    let opts = OpenOptions2 {
        segment_bytes: 4096,
        ..Default::default()
    };
    Ledger::open(d, &opts).unwrap()
}

/// The error `record` gives for this batch, which it must refuse.
fn refused(l: &mut Ledger, batch: &[&Owned]) -> String {
    let batch: Vec<AttemptIn> = batch.iter().map(|o| o.as_in()).collect();
    l.record(&batch).unwrap_err().to_string()
}

fn fill(l: &mut Ledger, probs: usize, per: u32) -> Vec<Owned> {
    let ids: Vec<String> = (0..probs).map(|i| format!("p{i}")).collect();
    let refs: Vec<String> = (0..probs).map(|i| format!("reference {i}")).collect();
    let idr: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    let rr: Vec<&str> = refs.iter().map(|s| s.as_str()).collect();
    l.add_problems(&idr, &rr).unwrap();
    let mut all = Vec::new();
    for s in 0..per {
        let batch: Vec<Owned> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| Owned::new(id, 0, s, (i + s as usize) % 3 == 0, s + 1))
            .collect();
        l.record(&batch.iter().map(|o| o.as_in()).collect::<Vec<_>>())
            .unwrap();
        all.extend(batch);
    }
    all
}

#[test]
fn roundtrip_and_reopen() {
    let d = tmpdir("roundtrip");
    let mut l = writer(&d);
    let all = fill(&mut l, 10, 4);
    let check = |l: &Ledger| {
        assert_eq!(l.len(), 10);
        let p3 = l.lookup("p3").unwrap();
        let cols = l.attempts(p3).unwrap();
        let mine: Vec<&Owned> = all.iter().filter(|o| o.pid == "p3").collect();
        assert_eq!(cols.len(), mine.len());
        for (k, o) in mine.iter().enumerate() {
            assert_eq!(cols.sample[k], o.sample);
            assert_eq!(cols.correct[k] == 1, o.correct);
            let t0 = cols.text_off[k] as usize;
            let t1 = cols.text_off[k + 1] as usize;
            assert_eq!(&cols.text[t0..t1], o.text.as_bytes());
            let a0 = cols.tok_off[k] as usize * 4;
            let a1 = cols.tok_off[k + 1] as usize * 4;
            assert_eq!(&cols.tokens[a0..a1], &o.toks[..]);
            assert_eq!(&cols.behavior[a0..a1], &o.blp[..]);
            let b0 = cols.base_off[k] as usize * 4;
            let b1 = cols.base_off[k + 1] as usize * 4;
            assert_eq!(&cols.base[b0..b1], o.base.as_deref().unwrap_or(&[]));
        }
        assert_eq!(l.reference(p3).unwrap(), "reference 3");
    };
    check(&l);
    let stats = |l: &Ledger| {
        let mut s = l.stats(Selection::Likeliest, 0);
        s.index_bytes = 0; // capacities differ between a grown and a replayed index
        format!("{s:?}")
    };
    let before = stats(&l);
    drop(l);
    let l = writer(&d);
    assert!(l.warnings().is_empty(), "{:?}", l.warnings());
    check(&l);
    assert_eq!(stats(&l), before);
}

#[test]
fn second_writer_refused_reader_allowed() {
    let d = tmpdir("lock");
    let mut l = writer(&d);
    fill(&mut l, 3, 1);
    let e = Ledger::open(&d, &OpenOptions2::default())
        .err()
        .expect("second writer must be refused");
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "{msg}"
    );
    assert!(msg.contains("readonly=True"), "{msg}");
    let r = reader(&d);
    assert_eq!(r.len(), 3);
    drop(l);
    drop(writer(&d));
}

fn seg1(d: &Path) -> PathBuf {
    d.join(segment_name(1))
}

#[test]
fn torn_tail_cut_with_warning() {
    let d = tmpdir("torn");
    let mut l = writer(&d);
    fill(&mut l, 4, 2);
    let good = fs::metadata(seg1(&d)).unwrap().len();
    let o = Owned::new("p1", 1, 9, true, 50);
    l.record(&[o.as_in()]).unwrap();
    drop(l);
    let full = fs::read(seg1(&d)).unwrap();
    for cut in [good as usize + 1, good as usize + 30, full.len() - 1] {
        fs::write(seg1(&d), &full[..cut]).unwrap();
        let l = writer(&d);
        assert_eq!(l.warnings().len(), 1, "{:?}", l.warnings());
        assert!(
            l.warnings()[0].contains(&format!("of {} ", plural(cut as u64 - good, "byte"))),
            "{:?}",
            l.warnings()
        );
        assert!(l.warnings()[0].contains("1 record"), "{:?}", l.warnings());
        assert_eq!(l.attempts(l.lookup("p1").unwrap()).unwrap().len(), 2);
        drop(l);
        assert_eq!(fs::metadata(seg1(&d)).unwrap().len(), good);
    }
}

#[test]
fn mid_file_corruption_named_then_repaired() {
    let d = tmpdir("corrupt");
    let mut l = writer(&d);
    fill(&mut l, 20, 3);
    drop(l);
    let mut bytes = fs::read(seg1(&d)).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    fs::write(seg1(&d), &bytes).unwrap();
    let e = Ledger::open(&d, &OpenOptions2::default())
        .err()
        .expect("corruption must be detected");
    match &e {
        Error::Corrupt { path, offset, .. } => {
            assert!(path.ends_with("seg-00000001.ldg"));
            assert!(
                *offset <= at as u64 && at as u64 - offset < 200,
                "offset {offset} vs flipped {at}"
            );
        }
        other => panic!("wrong error {other}"),
    }
    assert!(e.to_string().contains("repair=True"));
    let ro = Ledger::open(&d, &readonly());
    assert!(matches!(ro, Err(Error::Corrupt { .. })));
    let l = repairer(&d);
    assert!(l.warnings()[0].contains("repaired"), "{:?}", l.warnings());
    assert_eq!(l.len(), 20);
    drop(l);
    let l = writer(&d);
    assert!(l.warnings().is_empty());
}

#[test]
fn segments_roll_and_merge_matches_single_writer() {
    let d = tmpdir("single");
    let mut l = small_segments(&d);
    let all = fill(&mut l, 30, 3);
    l.finish_stage(&["p1", "p2"], 0).unwrap();
    assert!(l.segs.len() > 2);
    drop(l);
    // shards: even / odd problems, each its own writer
    let (a, b) = (tmpdir("shard-a"), tmpdir("shard-b"));
    for (dir, parity) in [(&a, 0usize), (&b, 1)] {
        let mut s = writer(dir);
        let ids: Vec<String> = (0..30)
            .filter(|i| i % 2 == parity)
            .map(|i| format!("p{i}"))
            .collect();
        let refs: Vec<String> = (0..30)
            .filter(|i| i % 2 == parity)
            .map(|i| format!("reference {i}"))
            .collect();
        s.add_problems(
            &ids.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
            &refs.iter().map(|x| x.as_str()).collect::<Vec<_>>(),
        )
        .unwrap();
        let mine: Vec<AttemptIn> = all
            .iter()
            .filter(|o| ids.contains(&o.pid))
            .map(|o| o.as_in())
            .collect();
        for chunk in mine.chunks(7) {
            s.record(chunk).unwrap();
        }
        let fin: Vec<&str> = ["p1", "p2"]
            .into_iter()
            .filter(|p| ids.iter().any(|x| x == p))
            .collect();
        s.finish_stage(&fin, 0).unwrap();
    }
    let m = tmpdir("merged");
    Ledger::merge(&[a.to_path_buf(), b.to_path_buf()], &m).unwrap();
    let one = reader(&d);
    let mer = reader(&m);
    assert_eq!(one.len(), mer.len());
    for sel in [
        Selection::First,
        Selection::Random,
        Selection::Likeliest,
        Selection::Shortest,
    ] {
        let (x, y) = (one.assign(sel, 5), mer.assign(sel, 5));
        // (sample, text) of the attempt `a` chose for problem `p` (none for expert)
        let chosen = |l: &Ledger, a: &index::Assigned, p: usize| {
            let loc: Vec<Loc> = l.chosen_locs(a)[p..p + 1]
                .iter()
                .copied()
                .filter(|&loc| loc != 0)
                .collect();
            let c = l.read_locs(&loc).unwrap();
            (c.sample, c.text)
        };
        for i in 0..30 {
            let id = format!("p{i}");
            let (p, q) = (
                one.lookup(&id).unwrap() as usize,
                mer.lookup(&id).unwrap() as usize,
            );
            assert_eq!(x.tier[p], y.tier[q]);
            assert_eq!(chosen(&one, &x, p), chosen(&mer, &y, q));
        }
    }
    for s in 0..3u8 {
        let ids = |l: &Ledger| {
            let mut v: Vec<String> = l
                .pending(s)
                .iter()
                .map(|&p| l.problem_id(p).to_string())
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids(&one), ids(&mer));
    }
}

#[test]
fn bad_inputs_rejected_whole() {
    let d = tmpdir("bad");
    let mut l = writer(&d);
    fill(&mut l, 2, 1);
    let good = Owned::new("p0", 0, 5, true, 3);
    let mut bad = Owned::new("p1", 0, 5, true, 3);
    bad.blp.truncate(4);
    let e = refused(&mut l, &[&good, &bad]);
    assert!(
        e.contains("attempt #1") && e.contains("behavior_logprobs has 1"),
        "{e}"
    );
    let unknown = Owned::new("zz", 0, 0, true, 1);
    assert!(refused(&mut l, &[&unknown]).contains("\"zz\""));
    assert_eq!(l.attempts(0).unwrap().len(), 1);
    let e = l.add_problems(&["p0"], &["other"]).unwrap_err().to_string();
    assert!(e.contains("different reference"), "{e}");
    l.add_problems(&["p0", "p9", "p9"], &["reference 0", "x", "x"])
        .unwrap();
    assert_eq!(l.len(), 3);
}

/// Every prefix of the last batch (a crash at any byte) and zero-filled
/// tails recover to exactly the state before that batch, with a warning.
#[test]
fn every_crash_point_of_last_batch_recovers() {
    let d = tmpdir("prefixes");
    let mut l = writer(&d);
    fill(&mut l, 5, 2);
    let good = fs::metadata(seg1(&d)).unwrap().len() as usize;
    let extra: Vec<Owned> = (0..3)
        .map(|k| Owned::new(&format!("p{k}"), 1, 40 + k, true, 4))
        .collect();
    l.record(&extra.iter().map(|o| o.as_in()).collect::<Vec<_>>())
        .unwrap();
    drop(l);
    let full = fs::read(seg1(&d)).unwrap();
    let total_before = |l: &Ledger| (0..5).map(|p| l.attempts(p).unwrap().len()).sum::<usize>();
    for cut in good..full.len() {
        let mut bytes = full[..cut].to_vec();
        for zeros in [0usize, 4096] {
            if zeros > 0 && full[cut..].iter().all(|&b| b == 0) {
                continue; // zero padding would restore the very bytes cut off
            }
            bytes.truncate(cut);
            bytes.resize(cut + zeros, 0);
            fs::write(seg1(&d), &bytes).unwrap();
            let l = writer(&d);
            assert_eq!(total_before(&l), 10, "cut at {cut} + {zeros} zeros");
            assert_eq!(
                l.warnings().len(),
                usize::from(cut + zeros > good),
                "cut {cut}: {:?}",
                l.warnings()
            );
        }
    }
    fs::write(seg1(&d), &full).unwrap();
    let l = writer(&d);
    assert_eq!(total_before(&l), 13);
}

/// A flipped byte anywhere in a committed segment is an error naming the
/// file (never silently accepted, never mistaken for a torn tail), except in
/// the length field of the very last frame, which can make it look cut short.
#[test]
fn every_flipped_byte_is_detected() {
    let d = tmpdir("flips");
    let mut l = writer(&d);
    fill(&mut l, 3, 2);
    // every kind of frame: fingerprints, a set-aside, a replaced reference
    l.sync_problems(
        &["p0", "p1", "p2"],
        &["reference 0", "new", "reference 2"],
        Some(&[fp(1); 3]),
        OnChange::SetAside,
    )
    .unwrap();
    l.set_aside(&["p0"]).unwrap();
    drop(l);
    let full = fs::read(seg1(&d)).unwrap();
    let last_len_field = full.len() - (FRAME_HEADER + 12) + 4..full.len() - (FRAME_HEADER + 12) + 8;
    for i in 0..full.len() {
        let mut bytes = full.clone();
        bytes[i] ^= 0x01;
        fs::write(seg1(&d), &bytes).unwrap();
        match Ledger::open(&d, &OpenOptions2::default()) {
            Err(Error::Corrupt { path, .. }) => assert!(path.ends_with("seg-00000001.ldg")),
            Err(e) if i < SEG_HEADER => assert!(e.to_string().contains("seg-00000001.ldg"), "{e}"),
            Ok(l) => {
                assert!(
                    last_len_field.contains(&i),
                    "flip at {i} accepted: {:?}",
                    l.warnings()
                );
                assert_eq!(l.warnings().len(), 1);
            }
            Err(e) => panic!("flip at {i}: unexpected error {e}"),
        }
    }
}

/// A damaged header of a later segment is named; repair keeps the earlier
/// segments and sets the damaged one (and any after it) aside.
#[test]
fn damaged_segment_header_named_then_set_aside() {
    let d = tmpdir("header");
    let mut l = small_segments(&d);
    fill(&mut l, 40, 6);
    let segs = l.segs.len();
    assert!(segs >= 3);
    drop(l);
    let second = d.join(segment_name(2));
    let mut bytes = fs::read(&second).unwrap();
    bytes[3] ^= 0xff;
    fs::write(&second, &bytes).unwrap();
    let e = Ledger::open(&d, &OpenOptions2::default())
        .err()
        .expect("damaged header");
    assert!(
        matches!(&e, Error::Corrupt { path, offset: 0, .. } if path.ends_with("seg-00000002.ldg")),
        "{e}"
    );
    let l = repairer(&d);
    assert_eq!(l.segs.len(), 1);
    assert_eq!(l.warnings().len(), segs - 1, "{:?}", l.warnings());
    assert!(
        l.warnings()[0].contains("damaged header"),
        "{:?}",
        l.warnings()
    );
    drop(l);
    let l = writer(&d);
    assert!(l.warnings().is_empty());
    assert!(d.join(format!("{}.quarantine", segment_name(2))).exists());
}

#[test]
fn merge_refuses_text_that_is_not_utf8_instead_of_blanking_it() {
    let h = AttemptHead {
        problem: 0,
        sample_index: 3,
        stage: 0,
        correct: true,
        has_base: false,
        ntok: 1,
        text_len: 2,
        reason_len: 2,
        score: 0.0,
        prev: 0,
    };
    let mut good = Vec::new();
    h.write(&mut good);
    good.extend_from_slice(b"ok");
    good.extend_from_slice(b"r!");
    good.extend_from_slice(&u32s(&[7]));
    good.extend_from_slice(&f32s(&[-0.5]));
    let a = attempt_in("p0", &AttemptHead::read(&good).unwrap(), &good).unwrap();
    assert_eq!((a.text, a.reason, a.sample_index), ("ok", "r!", 3));

    let mut bad = good.clone();
    bad[ATTEMPT_HEAD] = 0xff;
    let err = attempt_in("p0", &h, &bad).err().unwrap().to_string();
    assert!(err.contains("attempt 3 of problem \"p0\""), "{err}");
    assert!(err.contains("text is not UTF-8"), "{err}");
}

/// A new ledger holding problem "a" (reference "ra").
fn one_problem(name: &str) -> (TmpDir, Ledger) {
    let d = tmpdir(name);
    let mut l = writer(&d);
    l.add_problems(&["a"], &["ra"]).unwrap();
    (d, l)
}

fn sel_tiers(l: &Ledger) -> Vec<u8> {
    l.assign(Selection::First, 0).tier
}

/// A repeated (problem, stage, sample_index): identical is a no-op (also
/// within one batch and after reopening); different names the key and field.
#[test]
fn repeated_key_is_idempotent_when_identical_and_refused_when_different() {
    let d = tmpdir("dupkey");
    let mut l = writer(&d);
    l.add_problems(&["a", "b"], &["ra", "rb"]).unwrap();
    let first = Owned::new("a", 0, 3, false, 4);
    l.record(&[first.as_in()]).unwrap();
    let size = fs::metadata(seg1(&d)).unwrap().len();
    l.record(&[first.as_in(), first.as_in()]).unwrap();
    assert_eq!(
        fs::metadata(seg1(&d)).unwrap().len(),
        size,
        "nothing written"
    );
    assert_eq!(l.attempts(0).unwrap().len(), 1);
    let mut other = Owned::new("a", 0, 3, true, 4);
    let e = refused(&mut l, &[&other]);
    assert!(
        e.contains("attempt #0 (problem \"a\", stage self, sample 3): correct (recorded false, now true) differs"),
        "{e}"
    );
    other.correct = false;
    other.text.push('!');
    drop(l);
    let mut l = writer(&d);
    let fresh = Owned::new("b", 0, 3, true, 2);
    let e = refused(&mut l, &[&fresh, &other]);
    assert!(
        e.contains("attempt #1") && e.contains("text differs"),
        "{e}"
    );
    assert!(
        l.attempts(1).unwrap().is_empty(),
        "the batch is refused whole"
    );
    let twice = Owned::new("b", 1, 0, true, 2);
    let mut twice2 = Owned::new("b", 1, 0, true, 2);
    twice2.blp = f32s(&[0.5, 0.25]);
    let e = refused(&mut l, &[&twice, &twice2]);
    assert!(
        e.contains("behavior_logprobs differs from attempt #0 of this batch"),
        "{e}"
    );
    // a duplicate within the batch after the batch's key map was built
    let (x, y) = (
        Owned::new("b", 2, 7, true, 2),
        Owned::new("b", 2, 8, true, 2),
    );
    let mut y2 = Owned::new("b", 2, 8, true, 2);
    y2.correct = false;
    let e = refused(&mut l, &[&x, &first, &y, &y2]);
    assert!(
        e.contains("attempt #3") && e.contains("from attempt #2 of this batch"),
        "{e}"
    );
    l.record(&[x.as_in(), first.as_in(), y.as_in(), y.as_in()])
        .unwrap();
    assert_eq!(l.attempts(1).unwrap().len(), 2);
    // another stage or sample is a different key
    l.record(&[
        Owned::new("a", 1, 3, true, 4).as_in(),
        Owned::new("a", 0, 4, true, 4).as_in(),
    ])
    .unwrap();
    assert_eq!(l.attempts(0).unwrap().len(), 3);
    assert_eq!(l.attempts(1).unwrap().len(), 2);
}

/// Many attempts of one problem: the key cache agrees with the chain.
#[test]
fn repeated_keys_found_on_long_chains() {
    let (d, mut l) = one_problem("longchain");
    let all: Vec<Owned> = (0..300)
        .map(|k| Owned::new("a", (k % 3) as u8, k, k % 2 == 0, 2))
        .collect();
    for c in all.chunks(7) {
        l.record(&c.iter().map(|o| o.as_in()).collect::<Vec<_>>())
            .unwrap();
    }
    for round in 0..2 {
        for o in all.iter().step_by(13) {
            l.record(&[o.as_in()]).unwrap();
            let mut changed = Owned::new("a", o.stage, o.sample, o.correct, 3);
            changed.text = o.text.clone();
            let e = refused(&mut l, &[&changed]);
            assert!(e.contains("token_ids differs"), "round {round}: {e}");
        }
        assert_eq!(l.attempts(0).unwrap().len(), 300);
        drop(l);
        l = writer(&d);
    }
}

#[test]
fn non_finite_logprobs_named_with_position() {
    let (_d, mut l) = one_problem("nan");
    for (bad, which) in [
        (f32::NAN, "behavior"),
        (f32::INFINITY, "base"),
        (f32::NEG_INFINITY, "behavior"),
    ] {
        let mut o = Owned::new("a", 0, 2, true, 4);
        let mut v = vec![-0.5f32; 4];
        v[2] = bad;
        if which == "base" {
            o.base = Some(f32s(&v));
        } else {
            o.blp = f32s(&v);
        }
        let e = refused(&mut l, &[&o]);
        let want = format!("sample 2): {which}_logprobs[2] is {bad}; log-probs must be finite");
        assert!(e.contains(&want), "{e}");
    }
    assert!(l.attempts(0).unwrap().is_empty());
}

#[test]
fn opening_a_directory_that_is_not_a_ledger_says_so() {
    let d = tmpdir("notledger");
    fs::create_dir_all(d.join("ledger")).unwrap();
    writer(&d.join("ledger"));
    let opts = OpenOptions2 {
        create: false,
        readonly: true,
        ..Default::default()
    };
    let e = Ledger::open(&d, &opts).err().unwrap().to_string();
    assert!(
        e.contains("is not a ledger: it has no LOCK or seg-*.ldg files"),
        "{e}"
    );
    assert!(
        e.contains(&format!("it holds one at {}", d.join("ledger").display())),
        "{e}"
    );
    assert_eq!(fs::read_dir(&d).unwrap().count(), 1, "nothing created");
    assert!(Ledger::open(&d.join("ledger"), &opts).is_ok());
}

fn fp(n: u8) -> [u8; FP_LEN] {
    [n; FP_LEN]
}

/// Sync problems a, b, c with references ra, rb, rc at fingerprint 1.
fn sync_abc_unchanged(l: &mut Ledger) -> ProblemSync {
    l.sync_problems(
        &["a", "b", "c"],
        &["ra", "rb", "rc"],
        Some(&[fp(1); 3]),
        OnChange::Refuse,
    )
    .unwrap()
}

/// Build a ledger with problems a, b, c at fingerprint 1 and a few attempts each.
fn fingerprinted(d: &Path) -> Ledger {
    let mut l = writer(d);
    let r = sync_abc_unchanged(&mut l);
    assert_eq!(r.added, 3);
    let atts: Vec<Owned> = ["a", "b", "c"]
        .iter()
        .flat_map(|p| (0..3).map(move |k| Owned::new(p, 0, k, k == 1, 3)))
        .collect();
    l.record(&atts.iter().map(|o| o.as_in()).collect::<Vec<_>>())
        .unwrap();
    l.finish_stage(&["a", "b", "c"], 0).unwrap();
    l
}

#[test]
fn fingerprints_recorded_compared_and_changed_problems_set_aside() {
    let d = tmpdir("fp");
    let mut l = fingerprinted(&d);
    assert_eq!(sel_tiers(&l), vec![0, 0, 0]);
    // unchanged: nothing written
    let size = fs::metadata(seg1(&d)).unwrap().len();
    let r = sync_abc_unchanged(&mut l);
    assert_eq!((r.unchanged, r.added, r.changed.len()), (3, 0, 0));
    assert_eq!(fs::metadata(seg1(&d)).unwrap().len(), size);
    // refused: names the rows, writes nothing
    let e = l
        .sync_problems(
            &["a", "b", "c"],
            &["ra", "rb2", "rc"],
            Some(&[fp(1), fp(2), fp(3)]),
            OnChange::Refuse,
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(
            "2 problems changed since they were recorded (fingerprint differs): #1 \"b\", #2 \"c\""
        ),
        "{e}"
    );
    assert_eq!(fs::metadata(seg1(&d)).unwrap().len(), size);
    // set aside: b (new reference) and c (same reference, e.g. the answer changed)
    let r = l
        .sync_problems(
            &["a", "b", "c", "d"],
            &["ra", "rb2", "rc", "rd"],
            Some(&[fp(1), fp(2), fp(3), fp(4)]),
            OnChange::SetAside,
        )
        .unwrap();
    assert_eq!(
        (
            r.unchanged,
            r.added,
            r.changed.clone(),
            r.set_aside_attempts
        ),
        (1, 1, vec![1, 2], 6)
    );
    let check = |l: &Ledger, set_aside: (u64, u64)| {
        assert_eq!(l.fingerprint(1), Some(&fp(2)));
        assert_eq!(l.fingerprint(3), Some(&fp(4)));
        assert_eq!(l.reference(1).unwrap(), "rb2");
        assert_eq!(l.reference(2).unwrap(), "rc");
        assert_eq!(l.attempts(0).unwrap().len(), 3);
        assert!(l.attempts(1).unwrap().is_empty() && l.attempts(2).unwrap().is_empty());
        assert_eq!(sel_tiers(l), vec![0, 3, 3, 3]);
        assert_eq!(l.pending(0), vec![1, 2, 3]);
        let s = l.stats(Selection::First, 0);
        assert_eq!(
            (s.attempts, s.stages[0].1.attempts, s.stages[0].1.correct),
            (3, 3, 1)
        );
        assert_eq!((s.set_aside_problems, s.set_aside_attempts), set_aside);
        assert_eq!(s.fingerprinted, 4);
    };
    check(&l, (2, 6));
    // the same keys can be recorded again after the set-aside, and old ones stay on disk
    let redo = Owned::new("b", 0, 1, false, 5);
    l.record(&[redo.as_in()]).unwrap();
    assert_eq!(l.attempts(1).unwrap().len(), 1);
    drop(l);
    let mut l = writer(&d);
    assert_eq!(l.attempts(1).unwrap().len(), 1);
    assert_eq!(l.set_aside(&["b"]).unwrap(), (1, 1));
    check(&l, (3, 7));
    // the problem got its new fingerprint: a rerun with it changes nothing
    let r = l
        .sync_problems(&["b"], &["rb2"], Some(&[fp(2)]), OnChange::Refuse)
        .unwrap();
    assert_eq!(r.unchanged, 1);
    // nothing live: set_aside writes nothing
    assert_eq!(l.set_aside(&["b", "c"]).unwrap(), (0, 0));
}

#[test]
fn fingerprints_adopted_by_a_ledger_recorded_without_them() {
    let d = tmpdir("fpadopt");
    let mut l = writer(&d);
    fill(&mut l, 3, 2);
    let e = l.add_problems(&["p1"], &["other"]).unwrap_err().to_string();
    assert!(e.contains("pass fingerprints"), "{e}");
    let r = l
        .sync_problems(
            &["p0", "p1", "p2"],
            &["reference 0", "other", "reference 2"],
            Some(&[fp(7); 3]),
            OnChange::SetAside,
        )
        .unwrap();
    assert_eq!(
        (r.adopted, r.changed.clone(), r.set_aside_attempts),
        (2, vec![1], 2)
    );
    drop(l);
    let l = writer(&d);
    assert_eq!(l.fingerprint(0), Some(&fp(7)));
    assert_eq!(l.attempts(0).unwrap().len(), 2);
    assert_eq!(l.reference(1).unwrap(), "other");
    assert!(l.attempts(1).unwrap().is_empty());
}

/// A crash anywhere in the commit that sets problems aside leaves either the
/// state before it or the state after it, never a mix.
#[test]
fn every_crash_point_of_a_set_aside_recovers_old_or_new() {
    let d = tmpdir("fpcrash");
    let mut l = fingerprinted(&d);
    drop(l);
    let good = fs::metadata(seg1(&d)).unwrap().len() as usize;
    l = writer(&d);
    l.sync_problems(
        &["a", "b", "c"],
        &["ra2", "rb", "rc2"],
        Some(&[fp(2), fp(1), fp(2)]),
        OnChange::SetAside,
    )
    .unwrap();
    drop(l);
    let full = fs::read(seg1(&d)).unwrap();
    for cut in good..=full.len() {
        fs::write(seg1(&d), &full[..cut]).unwrap();
        let l = writer(&d);
        let done = cut == full.len();
        assert_eq!(
            l.fingerprint(0),
            Some(&fp(if done { 2 } else { 1 })),
            "cut {cut}"
        );
        assert_eq!(
            l.reference(2).unwrap(),
            if done { "rc2" } else { "rc" },
            "cut {cut}"
        );
        assert_eq!(
            l.attempts(0).unwrap().len(),
            if done { 0 } else { 3 },
            "cut {cut}"
        );
        assert_eq!(l.attempts(1).unwrap().len(), 3, "cut {cut}");
        assert_eq!(
            sel_tiers(&l),
            if done { vec![3, 0, 3] } else { vec![0, 0, 0] },
            "cut {cut}"
        );
        assert_eq!(
            l.warnings().len(),
            usize::from(!done && cut > good),
            "cut {cut}"
        );
    }
}

/// Merge copies fingerprints and set-asides in record order.
#[test]
fn merge_keeps_fingerprints_and_set_asides() {
    let d = tmpdir("fpmerge");
    let src = d.join("src");
    let mut l = fingerprinted(&src);
    l.sync_problems(&["b"], &["rb2"], Some(&[fp(5)]), OnChange::SetAside)
        .unwrap();
    l.record(&[Owned::new("b", 1, 0, true, 2).as_in()]).unwrap();
    drop(l);
    let out = d.join("out");
    Ledger::merge(std::slice::from_ref(&src), &out).unwrap();
    let (a, b) = (writer(&src), writer(&out));
    for p in 0..3 {
        assert_eq!(a.fingerprint(p), b.fingerprint(p));
        assert_eq!(a.reference(p).unwrap(), b.reference(p).unwrap());
        assert_eq!(a.attempts(p).unwrap(), b.attempts(p).unwrap());
    }
    assert_eq!(sel_tiers(&a), sel_tiers(&b));
    let (sa, sb) = (a.stats(Selection::First, 0), b.stats(Selection::First, 0));
    assert_eq!(
        (sa.set_aside_attempts, sa.attempts),
        (sb.set_aside_attempts, sb.attempts)
    );
}
