//! The extraction ladder: which part of a model's output is "the answer".
//!
//! Same precedence as the reference (math-verify 0.9.0, default `parse`), each
//! rung a hand-written matcher rather than a regular expression:
//!
//! | priority | what |
//! |---|---|
//! | 0  | "final answer is X. I hope" (not reproduced: such outputs are left undecided) |
//! | 50 | `\boxed{..}` (the last box), a math environment holding a box, "final answer ... is X" |
//! | 100 | "answer:" followed within 50 characters by math or a number |
//! | 200 | "answer" followed within 50 characters by math or a number |
//! | 300 | any math environment (`$..$`, `\[..\]`, `\(..\)`, ...), `\frac{a}{b}`, a number, an arithmetic expression |
//!
//! Within a priority the match that ends last wins (ties: the one starting
//! first); when it does not parse, the next one is tried, then the next priority.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvKind {
    DisplayDollar,
    DisplayBracket,
    InlineDollar,
    InlineParen,
    InlineBracket,
    Fraction,
    /// the bare `\boxed{...}` match (normalised with "last box" mode)
    Boxed,
}

#[derive(Clone, Debug)]
pub struct EnvM {
    pub kind: EnvKind,
    pub content: (usize, usize),
    pub pct: bool,
}

#[derive(Clone, Debug)]
pub enum CandKind {
    Latex(Vec<EnvM>),
    /// a plain number: the digits with separators removed, and a percent flag
    Number {
        text: String,
        pct: bool,
    },
    /// an arithmetic expression in plain text (`3 + 4`, `2*3`)
    Expr(String),
}

#[derive(Clone, Debug)]
pub struct Cand {
    pub start: usize,
    pub end: usize,
    pub kind: CandKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    Plain,
    Boxed,
}

fn b_at(t: &[u8], i: usize) -> u8 {
    if i < t.len() {
        t[i]
    } else {
        0
    }
}

/// Python's `\s` for one character starting at byte `i` (returns its byte length).
fn ws_len(t: &str, i: usize) -> usize {
    match t[i..].chars().next() {
        Some(c) if c.is_whitespace() => c.len_utf8(),
        _ => 0,
    }
}

fn skip_ws(t: &str, mut i: usize) -> usize {
    while i < t.len() {
        let l = ws_len(t, i);
        if l == 0 {
            break;
        }
        i += l;
    }
    i
}

fn next_char_len(t: &str, i: usize) -> usize {
    t[i..].chars().next().map_or(1, |c| c.len_utf8())
}

/// Percent suffix `(\\?%|[Pp]ercent|[Pp]ercentage|[Pp]ct)` at `i`: its length.
fn pct_len(t: &str, i: usize) -> usize {
    let r = &t[i..];
    if r.starts_with("\\%") {
        return 2;
    }
    if r.starts_with('%') {
        return 1;
    }
    for w in [
        "Percent",
        "percent",
        "Percentage",
        "percentage",
        "Pct",
        "pct",
    ] {
        if r.starts_with(w) {
            return w.len();
        }
    }
    0
}

#[derive(Clone, Copy)]
enum Closer {
    Bracket,
    Paren,
    Newline,
}

struct Closers {
    key: (usize, usize),
    bracket: Vec<usize>,
    paren: Vec<usize>,
    newline: Vec<usize>,
}

thread_local! {
    /// Positions of `\]`, `\)` and newlines of the text being scanned; reset at
    /// every `candidates` call, so it never outlives one text.
    static CLOSERS: std::cell::RefCell<Option<Closers>> = const { std::cell::RefCell::new(None) };
}

fn reset_closers() {
    CLOSERS.with(|c| *c.borrow_mut() = None);
}

/// First position >= `from` of the closer in `t`.
fn next_closer(t: &str, which: Closer, from: usize) -> Option<usize> {
    CLOSERS.with(|c| {
        let mut c = c.borrow_mut();
        let key = (t.as_ptr() as usize, t.len());
        if !c.as_ref().is_some_and(|x| x.key == key) {
            let b = t.as_bytes();
            let mut cl = Closers {
                key,
                bracket: Vec::new(),
                paren: Vec::new(),
                newline: Vec::new(),
            };
            for k in 0..b.len() {
                match b[k] {
                    b'\\' if b_at(b, k + 1) == b']' => cl.bracket.push(k),
                    b'\\' if b_at(b, k + 1) == b')' => cl.paren.push(k),
                    b'\n' => cl.newline.push(k),
                    _ => {}
                }
            }
            *c = Some(cl);
        }
        let cl = c.as_ref().unwrap();
        let v = match which {
            Closer::Bracket => &cl.bracket,
            Closer::Paren => &cl.paren,
            Closer::Newline => &cl.newline,
        };
        let k = v.partition_point(|&p| p < from);
        v.get(k).copied()
    })
}

/// One math environment starting at `i` (regex alternation order), plus the
/// trailing `\s*` and optional percent sign.
fn m_env(t: &str, i: usize, ctx: Ctx) -> Option<(usize, EnvM)> {
    let b = t.as_bytes();
    // cheap rejection: every alternative starts with one of these
    match b_at(b, i) {
        b'$' => {}
        b'\\' => {
            let n = b_at(b, i + 1);
            if !(n == b'[' || n == b'(' || (n == b'f' && ctx == Ctx::Plain)) {
                return None;
            }
        }
        b'-' => {
            if ctx != Ctx::Plain || b_at(b, i + 1) != b'\\' {
                return None;
            }
        }
        c if c.is_ascii_whitespace() => {
            if b_at(b, i + 1) != b'[' {
                return None;
            }
        }
        c if c >= 0x80 => {}
        _ => return None,
    }
    let prev = if i > 0 { b[i - 1] } else { 0 };
    let mut found: Option<(usize, EnvKind, (usize, usize))> = None;
    // $$ ... $$
    if found.is_none() && t[i..].starts_with("$$") && prev != b'\\' {
        let cs = i + 2;
        let mut j = cs;
        while j < b.len() {
            if j > cs && b[j] == b'$' && b_at(b, j + 1) == b'$' && b[j - 1] != b'\\' {
                found = Some((j + 2, EnvKind::DisplayDollar, (cs, j)));
                break;
            }
            if b[j] == b'$' && b_at(b, j + 1) == b'$' {
                break;
            }
            j += 1;
        }
    }
    // \[ ... \] : ends at the first "\]" (found by binary search, so that many
    // unclosed openers stay linear)
    if found.is_none() && t[i..].starts_with("\\[") && prev != b'\\' {
        let cs = i + 2;
        if let Some(j) = next_closer(t, Closer::Bracket, cs) {
            if j > cs && b[j - 1] != b'\\' {
                found = Some((j + 2, EnvKind::DisplayBracket, (cs, j)));
            }
        }
    }
    // $ ... $ (single line, not after a digit or backslash)
    if found.is_none() && b_at(b, i) == b'$' && prev != b'\\' && !prev.is_ascii_digit() {
        let cs = i + 1;
        let mut j = cs;
        while j < b.len() {
            if j > cs && b[j] == b'$' && b[j - 1] != b'\\' {
                found = Some((j + 1, EnvKind::InlineDollar, (cs, j)));
                break;
            }
            if b[j] == b'\\' && b_at(b, j + 1) == b'$' {
                j += 2;
                continue;
            }
            if b[j] == b'\n' || b[j] == b'$' {
                break;
            }
            j += 1;
        }
    }
    // \( ... \) : single line, ends at the first "\)"
    if found.is_none() && t[i..].starts_with("\\(") && prev != b'\\' {
        let cs = i + 2;
        if let Some(j) = next_closer(t, Closer::Paren, cs) {
            let nl = next_closer(t, Closer::Newline, cs).unwrap_or(usize::MAX);
            if nl > j && j > cs && b[j - 1] != b'\\' {
                found = Some((j + 2, EnvKind::InlineParen, (cs, j)));
            }
        }
    }
    // \s[ ... ]\s
    if found.is_none() {
        let w = ws_len(t, i);
        if w > 0 && b_at(b, i + w) == b'[' {
            let cs = i + w + 1;
            let mut j = cs;
            while j < b.len() {
                if j > cs && b[j] == b']' {
                    let wl = if j + 1 < b.len() { ws_len(t, j + 1) } else { 0 };
                    if wl > 0 {
                        found = Some((j + 1 + wl, EnvKind::InlineBracket, (cs, j)));
                    }
                    break;
                }
                if b[j] == b'\n' || b[j] == b'[' || b[j] == b']' {
                    break;
                }
                j += 1;
            }
        }
    }
    // -?\frac{n}{n}
    if found.is_none() && ctx == Ctx::Plain {
        let mut j = i;
        if b_at(b, j) == b'-' {
            j += 1;
        }
        if t[j..].starts_with("\\frac{") {
            let mut k = j + 6;
            let simple = |k: &mut usize| -> bool {
                let st = *k;
                if b_at(b, *k) == b'-' {
                    *k += 1;
                }
                let ds = *k;
                while b_at(b, *k).is_ascii_digit() {
                    *k += 1;
                }
                if *k == ds {
                    *k = st;
                    return false;
                }
                if (b_at(b, *k) == b'.' || b_at(b, *k) == b',') && b_at(b, *k + 1).is_ascii_digit()
                {
                    *k += 1;
                    while b_at(b, *k).is_ascii_digit() {
                        *k += 1;
                    }
                }
                true
            };
            if simple(&mut k) && b_at(b, k) == b'}' && b_at(b, k + 1) == b'{' {
                k += 2;
                if simple(&mut k) && b_at(b, k) == b'}' {
                    found = Some((k + 1, EnvKind::Fraction, (i, k + 1)));
                }
            }
        }
    }
    let (end, kind, content) = found?;
    if ctx == Ctx::Boxed {
        // the environment must hold \boxed{<something>}
        let c = &t[content.0..content.1];
        let ok = c.find("\\boxed{").is_some_and(|p| {
            let mut rest = c[p + 7..].chars();
            rest.next().is_some() && rest.as_str().contains('}')
        });
        if !ok {
            return None;
        }
    }
    let mut e = skip_ws(t, end);
    let pl = pct_len(t, e);
    let pct = pl > 0;
    if pct {
        e += pl;
    } else {
        e = skip_ws(t, end);
    }
    Some((e, EnvM { kind, content, pct }))
}

/// An environment followed by up to 5 more joined by "and", "or" or ",".
fn m_chain(t: &str, i: usize, ctx: Ctx) -> Option<(usize, Vec<EnvM>)> {
    let (mut end, first) = m_env(t, i, ctx)?;
    let mut envs = vec![first];
    for _ in 0..5 {
        if ctx == Ctx::Boxed {
            end = skip_ws(t, end);
        }
        let mut j = skip_ws(t, end);
        let r = &t[j..];
        let sep = if r.starts_with(",and") {
            4
        } else if r.starts_with("and") || r.starts_with(",or") {
            3
        } else if r.starts_with("or") {
            2
        } else if r.starts_with(',') {
            1
        } else {
            0
        };
        if sep == 0 {
            break;
        }
        j = skip_ws(t, j + sep);
        match m_env(t, j, ctx) {
            Some((e, m)) => {
                envs.push(m);
                end = e;
            }
            None => break,
        }
    }
    Some((end, envs))
}

const CURRENCY: &str = "$€£¥₹₽₪₩₫฿₡₢₣₤₥₦₧₨₩₪₫₭₮₯₰₱₲₳₴₵₶₷₸₹₺₻₼₽₾₿";

/// `(?:^|\s|=)(?:\*\*)?` at `i`: the position after the prefix.
/// Positions after `(?:^|\s|=)(?:\*\*)?` at `i`, in the order the regex tries them
/// (a fixed-size list: this runs at every whitespace of the text).
fn m_prefix(t: &str, i: usize, at_start_ok: bool) -> Prefixes {
    let mut out = Prefixes { v: [0; 4], n: 0 };
    let b = t.as_bytes();
    let push_base = |p: usize, out: &mut Prefixes| {
        if t[p..].starts_with("**") {
            out.v[out.n] = p + 2;
            out.n += 1;
        }
        out.v[out.n] = p;
        out.n += 1;
    };
    if i == 0 && at_start_ok {
        push_base(0, &mut out);
    }
    if i < b.len() {
        let w = ws_len(t, i);
        if w > 0 {
            push_base(i + w, &mut out);
        } else if b[i] == b'=' {
            push_base(i + 1, &mut out);
        }
    }
    out
}

struct Prefixes {
    v: [usize; 4],
    n: usize,
}

impl IntoIterator for Prefixes {
    type Item = usize;
    type IntoIter = std::iter::Take<std::array::IntoIter<usize, 4>>;
    fn into_iter(self) -> Self::IntoIter {
        self.v.into_iter().take(self.n)
    }
}

fn digits(b: &[u8], mut i: usize) -> usize {
    while b_at(b, i).is_ascii_digit() {
        i += 1;
    }
    i
}

/// The number alternatives at `i` (after prefix and currency): (end, text, pct)
fn m_number_core(t: &str, i: usize) -> Option<(usize, String, bool)> {
    let b = t.as_bytes();
    if i > 0 && b[i - 1].is_ascii_digit() {
        return None;
    }
    let mut res: Option<(usize, String)> = None;
    // format 1: thousands separators
    {
        let mut j = i;
        let neg = b_at(b, j) == b'-';
        if neg {
            j += 1;
        }
        if (b'1'..=b'9').contains(&b_at(b, j)) {
            let ds = j;
            let de = digits(b, j);
            if de - ds <= 3 {
                let mut k = de;
                let mut groups = 0;
                while (b_at(b, k) == b' ' || b_at(b, k) == b',')
                    && (1..=3).all(|o| b_at(b, k + o).is_ascii_digit())
                {
                    k += 4;
                    groups += 1;
                }
                if groups > 0 {
                    let int: String = t[ds..k].chars().filter(|c| c.is_ascii_digit()).collect();
                    let mut text = if neg { format!("-{int}") } else { int };
                    if b_at(b, k) == b'.' && b_at(b, k + 1).is_ascii_digit() {
                        let e = digits(b, k + 1);
                        text.push_str(&t[k..e]);
                        k = e;
                    }
                    res = Some((k, text));
                }
            }
        }
    }
    // format 2: 12.5 / 12,5
    if res.is_none() {
        let mut j = i;
        let neg = b_at(b, j) == b'-';
        if neg {
            j += 1;
        }
        let de = digits(b, j);
        if de > j
            && (b_at(b, de) == b'.' || b_at(b, de) == b',')
            && b_at(b, de + 1).is_ascii_digit()
        {
            let fe = digits(b, de + 1);
            let text = format!(
                "{}{}.{}",
                if neg { "-" } else { "" },
                &t[j..de],
                &t[de + 1..fe]
            );
            res = Some((fe, text));
        }
    }
    // format 3: .5
    if res.is_none() && b_at(b, i) == b'.' && b_at(b, i + 1).is_ascii_digit() {
        let fe = digits(b, i + 1);
        res = Some((fe, t[i..fe].to_string()));
    }
    // format 4: integer
    if res.is_none() {
        let mut j = i;
        let neg = b_at(b, j) == b'-';
        if neg {
            j += 1;
        }
        let de = digits(b, j);
        if de > j {
            res = Some((de, t[i..de].to_string()));
        }
    }
    let (mut end, text) = res?;
    // percent: \s*(%|[Pp]ercent|\s*[Pp]ercentage|\s*[Pp]ct)
    let w = skip_ws(t, end);
    let r = &t[w..];
    let mut pct = false;
    for p in [
        "%",
        "Percent",
        "percent",
        "Percentage",
        "percentage",
        "Pct",
        "pct",
    ] {
        if r.starts_with(p) {
            end = w + p.len();
            pct = true;
            break;
        }
    }
    // the reference strips separators and leading zeros from the integer part
    let (sign, rest) = match text.strip_prefix('-') {
        Some(r) => ("-", r),
        None => ("", text.as_str()),
    };
    let (ip, fp) = match rest.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (rest, None),
    };
    let ip = ip.trim_start_matches('0');
    let ip = if ip.is_empty() { "0" } else { ip };
    let mut norm = format!("{sign}{ip}");
    if let Some(f) = fp {
        norm.push('.');
        norm.push_str(f);
    }
    Some((end, norm, pct))
}

/// Where a number may start at `p`: `[currency]?` is greedy, so after a currency
/// sign first, then at `p` itself.
fn number_starts(t: &str, p: usize) -> Vec<usize> {
    let mut starts = Vec::with_capacity(2);
    if let Some(c) = t[p..].chars().next() {
        if CURRENCY.contains(c) {
            starts.push(p + c.len_utf8());
        }
    }
    starts.push(p);
    starts
}

fn m_number_anchored(t: &str, i: usize) -> Option<(usize, CandKind)> {
    for p in m_prefix(t, i, true) {
        let starts = number_starts(t, p);
        for s in starts {
            if let Some((e, text, pct)) = m_number_core(t, s) {
                return Some((e, CandKind::Number { text, pct }));
            }
        }
    }
    None
}

fn is_expr_char(c: u8) -> bool {
    c.is_ascii_digit() || c == b'.' || c.is_ascii_whitespace() || is_op(c)
}

fn is_op(c: u8) -> bool {
    matches!(c, b'+' | b'-' | b'*' | b'/' | b'^' | b'(' | b')')
}

const MAX_EXPR_RUN: usize = 400;

/// `-?\(?-?\d[chars]*[ops][chars]+\)?` then the suffix, at `i` (after the prefix).
/// Only ASCII operators are reproduced; `×` and `÷` make the reference's
/// expression parser fail, so a run containing them is reported as such.
fn m_expr_core(t: &str, i: usize, accept: &dyn Fn(usize) -> bool) -> Option<(usize, String)> {
    let b = t.as_bytes();
    let mut j = i;
    if b_at(b, j) == b'-' {
        j += 1;
    }
    if b_at(b, j) == b'(' {
        j += 1;
    }
    if b_at(b, j) == b'-' {
        j += 1;
    }
    if !b_at(b, j).is_ascii_digit() {
        return None;
    }
    let q = j;
    // the run of expression characters; × and ÷ belong to the class (the
    // reference's expression parser then rejects them, and the candidate fails)
    let uni_op = |k: usize| -> usize {
        if t.is_char_boundary(k) && (t[k..].starts_with('×') || t[k..].starts_with('÷')) {
            2
        } else {
            0
        }
    };
    let mut r = q + 1;
    while r < b.len() && r - q < MAX_EXPR_RUN {
        if is_expr_char(b[r]) {
            r += 1;
        } else if uni_op(r) > 0 {
            r += 2;
        } else {
            break;
        }
    }
    // suffix: (?:\*\*)?(?:\.|,|:|\s|\)|\$|$)
    let end_at = |f: usize| -> Option<usize> {
        if f >= b.len() {
            return Some(f);
        }
        if matches!(b[f], b'.' | b',' | b':' | b')' | b'$') {
            return Some(f + 1);
        }
        let w = ws_len(t, f);
        (w > 0).then_some(f + w)
    };
    let suffix_at = |f: usize| -> Option<usize> {
        if t[f..].starts_with("**") {
            if let Some(e) = end_at(f + 2) {
                return Some(e);
            }
        }
        end_at(f)
    };
    // op positions from the right (greedy [chars]*), ends from the right (greedy [chars]+)
    let mut op = r;
    while op > q + 1 {
        op -= 1;
        let ol = if is_op(b[op]) { 1 } else { uni_op(op) };
        if ol == 0 {
            continue;
        }
        let mut e = r;
        while e > op + ol {
            if !t.is_char_boundary(e) {
                e -= 1;
                continue;
            }
            // \)? greedy
            if b_at(b, e) == b')' {
                if let Some(f) = suffix_at(e + 1) {
                    if accept(f) {
                        return Some((f, t[i..e + 1].to_string()));
                    }
                }
            }
            if let Some(f) = suffix_at(e) {
                if accept(f) {
                    return Some((f, t[i..e].to_string()));
                }
            }
            e -= 1;
        }
    }
    None
}

fn m_expr_anchored_with(
    t: &str,
    i: usize,
    accept: &dyn Fn(usize) -> bool,
) -> Option<(usize, CandKind)> {
    for p in m_prefix(t, i, true) {
        if let Some((e, s)) = m_expr_core(t, p, accept) {
            return Some((e, CandKind::Expr(s)));
        }
    }
    None
}

fn m_expr_anchored(t: &str, i: usize) -> Option<(usize, CandKind)> {
    m_expr_anchored_with(t, i, &|_| true)
}

/// `EXPR_OR_NUMBER` followed by a condition on what comes after (the
/// reference's `(?!\s*=)`): backtracks into shorter expressions, then numbers.
fn m_expr_or_number_with(
    t: &str,
    i: usize,
    accept: &dyn Fn(usize) -> bool,
) -> Option<(usize, CandKind)> {
    if let Some(m) = m_expr_anchored_with(t, i, accept) {
        return Some(m);
    }
    match m_number_anchored(t, i) {
        Some((e, k)) if accept(e) => Some((e, k)),
        Some((_, CandKind::Number { text, pct: true })) => {
            // without the optional percent sign
            let end = number_end_without_pct(t, i)?;
            if accept(end) {
                Some((end, CandKind::Number { text, pct: false }))
            } else {
                None
            }
        }
        _ => None,
    }
}

fn number_end_without_pct(t: &str, i: usize) -> Option<usize> {
    for p in m_prefix(t, i, true) {
        let starts = number_starts(t, p);
        for s in starts {
            if let Some((e, _, pct)) = m_number_core(t, s) {
                if !pct {
                    return Some(e);
                }
                // recompute the end before the percent suffix
                let b = t.as_bytes();
                let mut k = e;
                while k > s && !b[k - 1].is_ascii_digit() {
                    k -= 1;
                }
                return Some(k);
            }
        }
    }
    None
}

fn m_expr_or_number(t: &str, i: usize) -> Option<(usize, CandKind)> {
    m_expr_or_number_with(t, i, &|_| true)
}

fn find_ci(t: &str, from: usize, pat: &str) -> Option<usize> {
    let b = t.as_bytes();
    let p = pat.as_bytes();
    if p.is_empty() || b.len() < p.len() {
        return None;
    }
    let (lo, up) = (p[0].to_ascii_lowercase(), p[0].to_ascii_uppercase());
    let last = b.len() - p.len();
    let mut i = from;
    while i <= last {
        // first byte (either case) located with a fast scan, then the rest compared
        match b[i..=last].iter().position(|&c| c == lo || c == up) {
            None => return None,
            Some(k) => i += k,
        }
        if b[i..i + p.len()].eq_ignore_ascii_case(p) {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// Byte positions reachable by skipping 0..=n characters from `i` (dotall: `.` matches newlines).
fn char_steps(t: &str, i: usize, n: usize, dotall: bool) -> Vec<usize> {
    let mut out = vec![i];
    let mut j = i;
    for _ in 0..n {
        if j >= t.len() {
            break;
        }
        let c = t[j..].chars().next().unwrap();
        if !dotall && c == '\n' {
            break;
        }
        j += c.len_utf8();
        out.push(j);
    }
    out
}

/// Matches of `answer[:].{0,50}?LATEX` (latex = true) or the expression form.
fn answer_matches(t: &str, colon: bool, latex: bool, out: &mut Vec<Cand>) {
    let mut from = 0;
    while let Some(s) = find_ci(t, from, "answer") {
        let mut p = s + 6;
        if colon {
            if b_at(t.as_bytes(), p) != b':' {
                from = s + 1;
                continue;
            }
            p += 1;
        }
        let mut got: Option<(usize, CandKind)> = None;
        if latex {
            for q in char_steps(t, p, 50, true) {
                if let Some((e, envs)) = m_chain(t, q, Ctx::Plain) {
                    got = Some((e, CandKind::Latex(envs)));
                    break;
                }
            }
        } else {
            // (?:.{0,100}=\s*|.{0,50}?) EXPR_OR_NUMBER (?!\s*=)
            let not_eq_after = |e: usize| -> bool { b_at(t.as_bytes(), skip_ws(t, e)) != b'=' };
            let steps = char_steps(t, p, 100, false);
            'outer: for &q in steps.iter().rev() {
                if b_at(t.as_bytes(), q) != b'=' {
                    continue;
                }
                let after = q + 1;
                let ws_end = skip_ws(t, after);
                // \s* greedy, backtracking one whitespace at a time
                let mut k = ws_end;
                loop {
                    if let Some((e, kind)) = m_expr_or_number_with(t, k, &not_eq_after) {
                        got = Some((e, kind));
                        break 'outer;
                    }
                    if k == after {
                        break;
                    }
                    // step back one char
                    let prev = t[..k].chars().next_back().map_or(1, |c| c.len_utf8());
                    k -= prev;
                }
            }
            if got.is_none() {
                for q in char_steps(t, p, 50, false) {
                    if let Some((e, kind)) = m_expr_or_number_with(t, q, &not_eq_after) {
                        got = Some((e, kind));
                        break;
                    }
                }
            }
        }
        from = push_match(out, s, got);
    }
}

/// Record a match found at `s` (if any); returns where the next search starts.
fn push_match(out: &mut Vec<Cand>, s: usize, got: Option<(usize, CandKind)>) -> usize {
    match got {
        Some((end, kind)) => {
            out.push(Cand {
                start: s,
                end,
                kind,
            });
            end.max(s + 1)
        }
        None => s + 1,
    }
}

/// `final answer.{0,100}?\s+is:?\s*LATEX` / `...is:?EXPR_OR_NUMBER`
fn final_answer_matches(t: &str, latex: bool, out: &mut Vec<Cand>) {
    let mut from = 0;
    while let Some(s) = find_ci(t, from, "final answer") {
        let p = s + 12;
        let mut got: Option<(usize, CandKind)> = None;
        for q in char_steps(t, p, 100, latex) {
            // \s+is
            let w = skip_ws(t, q);
            if w == q || !t[w..].starts_with("is") {
                continue;
            }
            let mut k = w + 2;
            if b_at(t.as_bytes(), k) == b':' {
                k += 1;
            }
            if latex {
                let k2 = skip_ws(t, k);
                if let Some((e, envs)) = m_chain(t, k2, Ctx::Plain) {
                    got = Some((e, CandKind::Latex(envs)));
                    break;
                }
            } else if let Some((e, kind)) = m_expr_or_number(t, k) {
                got = Some((e, kind));
                break;
            }
        }
        from = push_match(out, s, got);
    }
}

/// `\.?\s?I hope` at `e`: the end of it.
fn hope_tail(t: &str, e: usize) -> Option<usize> {
    let mut k = e;
    if b_at(t.as_bytes(), k) == b'.' {
        k += 1;
    }
    for k2 in [k + if k < t.len() { ws_len(t, k) } else { 0 }, k] {
        if t[k2..].starts_with("I hope") {
            return Some(k2 + 6);
        }
    }
    None
}

/// `final answer is:?\s*X\.?\s?I hope` (the reference's priority 0).
fn final_answer_hope_matches(t: &str, latex: bool, out: &mut Vec<Cand>) {
    let mut from = 0;
    while let Some(s) = find_ci(t, from, "final answer is") {
        let mut k = s + 15;
        if b_at(t.as_bytes(), k) == b':' {
            k += 1;
        }
        let after = k;
        let ws_end = skip_ws(t, k);
        let mut got: Option<(usize, CandKind)> = None;
        if latex {
            if let Some((e, envs)) = m_chain(t, ws_end, Ctx::Plain) {
                if let Some(h) = hope_tail(t, e) {
                    got = Some((h, CandKind::Latex(envs)));
                }
            }
        } else {
            let ok = |e: usize| hope_tail(t, e).is_some();
            let mut k = ws_end;
            loop {
                if let Some((e, kind)) = m_expr_or_number_with(t, k, &ok) {
                    got = hope_tail(t, e).map(|h| (h, kind));
                    break;
                }
                if k == after {
                    break;
                }
                k -= t[..k].chars().next_back().map_or(1, |c| c.len_utf8());
            }
        }
        from = push_match(out, s, got);
    }
}

type Matcher<'a> = &'a dyn Fn(&str, usize) -> Option<(usize, CandKind)>;

fn scan_all(t: &str, f: Matcher<'_>, starts: &dyn Fn(&[u8], usize) -> bool, out: &mut Vec<Cand>) {
    let b = t.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if starts(b, i) && t.is_char_boundary(i) {
            if let Some((e, kind)) = f(t, i) {
                out.push(Cand {
                    start: i,
                    end: e,
                    kind,
                });
                i = e.max(i + 1);
                continue;
            }
        }
        i += 1;
    }
}

/// Where a math environment can start: `$`, a backslash, `-\frac`, or a
/// whitespace before `[` (a cheap filter; the matcher decides).
fn env_start(b: &[u8], i: usize) -> bool {
    match b[i] {
        b'$' | b'\\' => true,
        b'-' => b_at(b, i + 1) == b'\\',
        c if c.is_ascii_whitespace() => b_at(b, i + 1) == b'[',
        c => c >= 0x80,
    }
}

/// Where a number or an expression can start: the text start, or a whitespace or
/// `=` followed by something a number can begin with (a cheap filter).
fn anchor_start(b: &[u8], i: usize) -> bool {
    if i == 0 {
        return true;
    }
    if !(b[i].is_ascii_whitespace() || b[i] == b'=' || b[i] >= 0x80) {
        return false;
    }
    let n = b_at(b, i + 1);
    b[i] >= 0x80
        || n.is_ascii_digit()
        || matches!(n, b'.' | b'-' | b'(' | b'*')
        || n >= 0x80
        || n == b'$'
    // "\s\s" then a digit: the prefix is one whitespace, so a second one fails
}

/// Which extraction targets are enabled, and where `\boxed` ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtractOpts {
    pub latex: bool,
    pub expr: bool,
    /// `\boxed` before "final answer ... is" (the reference's boxed_match_priority=0)
    /// instead of alongside it (the default, 50)
    pub boxed_first: bool,
}

impl Default for ExtractOpts {
    fn default() -> Self {
        ExtractOpts {
            latex: true,
            expr: true,
            boxed_first: false,
        }
    }
}

/// The priority groups, in the order they are tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// "final answer is X. I hope" (priority 0)
    Hope,
    /// boxed (+ "final answer is" when they share a priority; + "I hope" forms
    /// when boxed comes first)
    Boxed,
    FinalAnswer,
    AnswerColon,
    Answer,
    Plain,
}

pub fn groups(o: &ExtractOpts) -> &'static [Group] {
    if o.boxed_first {
        &[
            Group::Boxed,
            Group::FinalAnswer,
            Group::AnswerColon,
            Group::Answer,
            Group::Plain,
        ]
    } else {
        &[
            Group::Boxed,
            Group::AnswerColon,
            Group::Answer,
            Group::Plain,
        ]
    }
}

fn boxed_candidates(t: &str, out: &mut Vec<Cand>) {
    scan_all(
        t,
        &|t, i| m_chain(t, i, Ctx::Boxed).map(|(e, v)| (e, CandKind::Latex(v))),
        &env_start,
        out,
    );
    // \boxed{.+} greedy: from the first "\boxed{" to the last "}" of the text
    if let Some(s) = t.find("\\boxed{") {
        if let Some(last) = t.rfind('}') {
            if last > s + 7 {
                out.push(Cand {
                    start: s,
                    end: last + 1,
                    kind: CandKind::Latex(vec![EnvM {
                        kind: EnvKind::Boxed,
                        content: (s, last + 1),
                        pct: false,
                    }]),
                });
            }
        }
    }
}

/// Candidates of one priority group, in the order they are tried.
pub fn candidates(t: &str, group: Group, o: &ExtractOpts) -> Vec<Cand> {
    reset_closers();
    let mut out = Vec::new();
    let hope = t.contains("I hope");
    match group {
        Group::Hope => {
            if hope && o.latex {
                final_answer_hope_matches(t, true, &mut out);
            }
            if hope && o.expr {
                final_answer_hope_matches(t, false, &mut out);
            }
        }
        Group::Boxed => {
            // the reference lists its LaTeX patterns before its expression patterns
            if o.latex && !o.boxed_first {
                final_answer_matches(t, true, &mut out);
            }
            if o.latex && o.boxed_first && hope {
                final_answer_hope_matches(t, true, &mut out);
            }
            if o.latex && t.contains("\\boxed") {
                boxed_candidates(t, &mut out);
            }
            if o.expr && !o.boxed_first {
                final_answer_matches(t, false, &mut out);
            }
            if o.expr && o.boxed_first && hope {
                final_answer_hope_matches(t, false, &mut out);
            }
        }
        Group::FinalAnswer => {
            if o.latex {
                final_answer_matches(t, true, &mut out);
            }
            if o.expr {
                final_answer_matches(t, false, &mut out);
            }
        }
        Group::AnswerColon | Group::Answer => {
            let colon = group == Group::AnswerColon;
            if o.latex {
                answer_matches(t, colon, true, &mut out);
            }
            if o.expr {
                answer_matches(t, colon, false, &mut out);
            }
        }
        Group::Plain => {
            if o.latex {
                scan_all(
                    t,
                    &|t, i| m_chain(t, i, Ctx::Plain).map(|(e, v)| (e, CandKind::Latex(v))),
                    &env_start,
                    &mut out,
                );
            }
            if o.expr {
                scan_all(t, &m_expr_anchored, &anchor_start, &mut out);
                scan_all(t, &m_number_anchored, &anchor_start, &mut out);
            }
        }
    }
    // rightmost end first, then leftmost start; stable for ties
    out.sort_by(|a, b| b.end.cmp(&a.end).then(a.start.cmp(&b.start)));
    out
}

pub fn char_len_at(t: &str, i: usize) -> usize {
    next_char_len(t, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first(t: &str) -> Option<(Group, Cand)> {
        let o = ExtractOpts::default();
        for &g in groups(&o) {
            if let Some(c) = candidates(t, g, &o).into_iter().next() {
                return Some((g, c));
            }
        }
        None
    }

    #[test]
    fn boxed_wins() {
        let (p, c) = first("so $x=2$ and \\boxed{5}.").unwrap();
        assert_eq!(p, Group::Boxed);
        assert!(matches!(c.kind, CandKind::Latex(ref v) if v[0].kind == EnvKind::Boxed));
    }

    #[test]
    fn last_number() {
        let (p, c) = first("we get 12 apples and then 15").unwrap();
        assert_eq!(p, Group::Plain);
        assert!(matches!(c.kind, CandKind::Number { ref text, .. } if text == "15"));
        let (_, c) = first("total 1,234,567 dollars").unwrap();
        assert!(matches!(c.kind, CandKind::Number { ref text, .. } if text == "1234567"));
    }

    #[test]
    fn answer_anchor() {
        let (p, c) = first("The answer is 7 and later 9").unwrap();
        assert_eq!(p, Group::Answer);
        assert!(matches!(c.kind, CandKind::Number { ref text, .. } if text == "7"));
    }

    #[test]
    fn expr_and_env() {
        let (_, c) = first("value = 3 + 4 apples").unwrap();
        assert!(matches!(c.kind, CandKind::Expr(ref s) if s == "3 + 4"));
        let (_, c) = first("so $\\frac{1}{2}$ is it").unwrap();
        assert!(matches!(c.kind, CandKind::Latex(ref v) if v[0].kind == EnvKind::InlineDollar));
    }
}
