//! LaTeX normalisation applied to an extracted answer before it is parsed.
//!
//! Mirrors the behaviour of the reference (math-verify 0.9.0 with its default
//! `LatexExtractionConfig`: basic LaTeX clean-up, units, malformed operators,
//! nits, `\boxed` extraction). Rare rewrites that are hard to reproduce exactly
//! are not attempted: `normalize` reports `None` and the pair is left undecided
//! for the fallback.

/// Which `\boxed` extraction mode to use (the reference uses "last" for a bare
/// `\boxed{..}` match and "all" for boxes inside a math environment).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BoxedMode {
    All,
    Last,
}

fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// Byte index of the matching `}` for the `{` at `open`, scanning at most up to `max`.
pub fn matching_brace(s: &str, open: usize, max: usize) -> Option<usize> {
    let b = s.as_bytes();
    let mut depth = 0usize;
    let mut i = open;
    while i < max {
        match b[i] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn has_separator(between: &str) -> bool {
    // `\b(and|or)\b|,|;`
    if between.contains(',') || between.contains(';') {
        return true;
    }
    for w in ["and", "or"] {
        let mut from = 0;
        while let Some(p) = between[from..].find(w) {
            let s = from + p;
            let e = s + w.len();
            let before_ok = s == 0 || !is_word_byte(between.as_bytes()[s - 1]);
            let after_ok = e >= between.len() || !is_word_byte(between.as_bytes()[e]);
            if before_ok && after_ok {
                return true;
            }
            from = e;
        }
    }
    false
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80
}

/// Content of the `\boxed{..}` / `\fbox{..}` boxes of `text`, right to left.
/// `Last`: the last box, plus earlier boxes that directly precede it separated
/// by a short separator. `All`: every box. Contents are joined with ",".
/// Returns `text` unchanged when it has no box.
pub fn extract_boxed(text: &str, mode: BoxedMode) -> String {
    let mut results: Vec<String> = Vec::new();
    let mut current = text.len();
    let mut max_pos = text.len();
    let mut last_boxed_start: Option<usize> = None;
    let mut last_b = text.rfind("\\boxed");
    let mut last_f = text.rfind("\\fbox");
    loop {
        // each command is searched for again only once the scan has passed its
        // last known position, so many boxes stay linear
        if last_b.is_some_and(|p| p + 6 > current) {
            last_b = text[..current].rfind("\\boxed");
        }
        if last_f.is_some_and(|p| p + 5 > current) {
            last_f = text[..current].rfind("\\fbox");
        }
        let (bi, fi) = (last_b, last_f);
        let (start, cmd_len) = match (bi, fi) {
            (None, None) => break,
            (Some(b), None) => (b, 6),
            (None, Some(f)) => (f, 5),
            (Some(b), Some(f)) => {
                if b > f {
                    (b, 6)
                } else {
                    (f, 5)
                }
            }
        };
        let mut next = start + cmd_len;
        while next < max_pos {
            let c = text[next..].chars().next().unwrap_or('\0');
            if is_space(c) {
                next += c.len_utf8();
            } else {
                break;
            }
        }
        if next >= max_pos {
            break;
        }
        if text.as_bytes()[next] == b'{' {
            match matching_brace(text, next, max_pos) {
                None => {
                    if results.is_empty() {
                        results.push(text[next..].to_string());
                    }
                    break;
                }
                Some(close) => {
                    let content = text[next + 1..close].trim().to_string();
                    if mode == BoxedMode::Last {
                        if let Some(lbs) = last_boxed_start {
                            let between = text.get(close + 1..lbs).unwrap_or("");
                            let prev = results.last().map(String::as_str).unwrap_or("");
                            let ok = between.chars().count() < 10
                                || (content != prev
                                    && between.chars().count() < 70
                                    && has_separator(between));
                            if !ok {
                                break;
                            }
                        }
                    }
                    if results.last().map(|r| r != &content).unwrap_or(true) {
                        results.push(content);
                    }
                    last_boxed_start = Some(start);
                    max_pos = start;
                }
            }
        } else {
            if results.is_empty() {
                results.push(text[next..].to_string());
            }
            break;
        }
        current = start;
    }
    if results.is_empty() {
        return text.to_string();
    }
    results.reverse();
    results.join(",")
}

const LEFT_DELIMS: &[&str] = &[
    "\\{",
    "{",
    "\\|",
    "|",
    "[",
    "(",
    "\\rbracl",
    "\\lgroup",
    "\\lbrace",
    "\\lbrack",
    "\\vert",
    "\\lvert",
    "\\lceil",
    "\\lfloor",
    "\\langle",
    "\\llcorner",
    "\\ulcorner",
];
const RIGHT_DELIMS: &[&str] = &[
    "\\}",
    "}",
    "\\|",
    "|",
    "]",
    ")",
    "\\rbrack",
    "\\rgroup",
    "\\rbrace",
    "\\vert",
    "\\rvert",
    "\\rceil",
    "\\rfloor",
    "\\langle",
    "\\rangle",
    "\\lrcorner",
    "\\urcorner",
];

/// Drop `\left` / `\mleft` (and right) before a delimiter, keeping the delimiter.
fn strip_left_right(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        let mut done = false;
        for (kw, delims) in [
            ("\\left", LEFT_DELIMS),
            ("\\mleft", LEFT_DELIMS),
            ("\\right", RIGHT_DELIMS),
            ("\\mright", RIGHT_DELIMS),
        ] {
            if let Some(after) = rest.strip_prefix(kw) {
                if delims.iter().any(|d| after.starts_with(d)) {
                    i += kw.len();
                    done = true;
                    break;
                }
            }
        }
        if done {
            continue;
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Basic clean-up: removals (`\!`, `$`, quotes, `\displaystyle`, empty `\text{}`)
/// then the single-pass replacements (`\dfrac`→`\frac`, `\mathrm`→`\text`,
/// "and"/"or" → ",", `infinity` → `\infty`, percent words → `\%`, ...).
fn basic_latex(s: &str) -> Option<String> {
    let s = s
        .replace("\\mathrm{T}", "T")
        .replace("\\mathrm{d}", "d")
        .replace("{\\rm d}", "d")
        .replace("\\left[\\begin{matrix}", "\\begin{bmatrix}")
        .replace("\\end{matrix}\\right]", "\\end{bmatrix}");
    let s = strip_left_right(&s);
    if s.contains(")_{") {
        // permutation rewrite (n)_{k} -> n!/(n-k)!: not reproduced
        return None;
    }
    // removals
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let rest = &s[i..];
        // these prefixes exclude one another, so the order of the checks does not matter
        if let Some(p) = REMOVED.iter().find(|p| rest.starts_with(**p)) {
            i += p.len();
            continue;
        }
        if rest.starts_with("\\!") {
            i += 2;
            i = skip_ascii_ws(b, i);
            continue;
        }
        if let Some(r) = rest.strip_prefix("\\text") {
            let t = r.trim_start();
            if let Some(t2) = t.strip_prefix('{') {
                let t3 = t2.trim_start();
                if t3.starts_with('}') {
                    i = s.len() - t3.len() + 1;
                    continue;
                }
            }
        }
        if (rest.starts_with('"') || rest.starts_with('\'')) && (i == 0 || b[i - 1] != b'\\') {
            i += 1;
            continue;
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    let s = replace_pass(&out);
    let s = s.replace(['\n', '\t'], " ");
    let s = if !s.contains("matrix") {
        fix_double_backslash(&s)
    } else {
        s
    };
    Some(s)
}

fn fix_double_backslash(s: &str) -> String {
    // `\\` followed by a letter -> `\`
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if b[i] == b'\\' && i + 2 < s.len() + 1 && b.get(i + 1) == Some(&b'\\') {
            if let Some(n) = b.get(i + 2) {
                if n.is_ascii_alphabetic() {
                    out.push('\\');
                    i += 2;
                    continue;
                }
            }
        }
        let c = s[i..].chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

fn is_alpha_at(b: &[u8], i: usize) -> bool {
    b.get(i).is_some_and(|c| c.is_ascii_alphabetic())
}

/// The single-pass alternation of replacements (first alternative that matches at
/// a position wins, scanning left to right).
/// Prefixes `basic_latex` drops.
const REMOVED: &[&str] = &["\\mathrm{th}", "\\$", "$", "\\displaystyle"];

/// \math(rm|it|bf) and the \text font variants -> \text; \(d|t|c)frac -> \frac.
const FONTS_AND_FRACS: &[(&str, &str)] = &[
    ("\\mathrm", "\\text"),
    ("\\mathit", "\\text"),
    ("\\mathbf", "\\text"),
    ("\\textnormal", "\\text"),
    ("\\textbf", "\\text"),
    ("\\textit", "\\text"),
    ("\\textrm", "\\text"),
    ("\\dfrac", "\\frac"),
    ("\\tfrac", "\\frac"),
    ("\\cfrac", "\\frac"),
];

/// The length of the first `from` of `table` that `rest` starts with, and its `to`.
fn literal_prefix(rest: &str, table: &[(&str, &'static str)]) -> Option<(usize, &'static str)> {
    table
        .iter()
        .find(|(from, _)| rest.starts_with(from))
        .map(|(from, to)| (from.len(), *to))
}

fn replace_pass(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len() + 8);
    let mut i = 0;
    'outer: while i < s.len() {
        let rest = &s[i..];
        if let Some((n, r)) = literal_prefix(rest, FONTS_AND_FRACS) {
            out.push_str(r);
            i += n;
            continue;
        }
        // \s\. -> " 0."
        if b[i].is_ascii_whitespace() && b.get(i + 1) == Some(&b'.') {
            out.push_str(" 0.");
            i += 2;
            continue;
        }
        if let Some((n, r)) = literal_prefix(rest, &[("{.", "{0."), ("~=", "\\approx")]) {
            out.push_str(r);
            i += n;
            continue;
        }
        // \s*\{\s*,\s*\} -> ","
        {
            let j = skip_ascii_ws(b, i);
            if b.get(j) == Some(&b'{') {
                let mut k = skip_ascii_ws(b, j + 1);
                if b.get(k) == Some(&b',') {
                    k += 1;
                    k = skip_ascii_ws(b, k);
                    if b.get(k) == Some(&b'}') {
                        out.push(',');
                        i = k + 1;
                        continue;
                    }
                }
            }
        }
        // (?<![a-zA-Z])(,?\s*(?:and|or))(?![a-zA-Z]) -> ","
        if i == 0 || !b[i - 1].is_ascii_alphabetic() {
            let mut j = i;
            if b[j] == b',' {
                j += 1;
            }
            j = skip_ascii_ws(b, j);
            let r = &s[j..];
            let word = and_or_len(r);
            // the lookbehind applies at the start of the match; a bare "and" needs
            // a non-letter before it, which is checked above
            if word > 0
                && !is_alpha_at(b, j + word)
                && (j > i || i == 0 || !b[i - 1].is_ascii_alphabetic())
            {
                out.push(',');
                i = j + word;
                continue;
            }
        }
        // ,?\s*\\text{\s*(and|or)\s*} -> ","
        {
            let mut j = i;
            if b[j] == b',' {
                j += 1;
            }
            j = skip_ascii_ws(b, j);
            if s[j..].starts_with("\\text{") {
                let mut k = skip_ascii_ws(b, j + 6);
                let w = and_or_len(&s[k..]);
                if w > 0 {
                    k += w;
                    k = skip_ascii_ws(b, k);
                    if b.get(k) == Some(&b'}') {
                        out.push(',');
                        i = k + 1;
                        continue;
                    }
                }
            }
        }
        // (?<!\\)\\\s -> " "
        if b[i] == b'\\'
            && (i == 0 || b[i - 1] != b'\\')
            && b.get(i + 1).is_some_and(|c| c.is_ascii_whitespace())
        {
            out.push(' ');
            i += 2;
            continue;
        }
        // infinity -> \infty; ,?(\\ldots) -> " "
        if let Some((n, r)) = literal_prefix(
            rest,
            &[("infinity", "\\infty"), (",\\ldots", " "), ("\\ldots", " ")],
        ) {
            out.push_str(r);
            i += n;
            continue;
        }
        // \s*\bpercentage\b etc.
        {
            let j = skip_ascii_ws(b, i);
            let word_start_ok = j == 0 || !is_word_byte(b[j - 1]) || j > i;
            let bstart = j == 0 || !is_word_byte(b[j - 1]);
            if word_start_ok && bstart {
                for w in ["percentage", "percent", "pct"] {
                    if s[j..].starts_with(w)
                        && !b.get(j + w.len()).is_some_and(|c| is_word_byte(*c))
                    {
                        out.push_str("\\%");
                        i = j + w.len();
                        continue 'outer;
                    }
                }
            }
        }
        if let Some((n, r)) = literal_prefix(
            rest,
            &[
                ("\\text{percentage}", "%"),
                ("\\text{percent}", "%"),
                ("\\text{pct}", "%"),
            ],
        ) {
            out.push_str(r);
            i += n;
            continue;
        }
        // (?<!\\)inf(?!inity) -> \infty
        if rest.starts_with("inf")
            && (i == 0 || b[i - 1] != b'\\')
            && !rest[3..].starts_with("inity")
        {
            out.push_str("\\infty");
            i += 3;
            continue;
        }
        if rest.starts_with(" sqrt") {
            out.push_str("\\sqrt");
            i += 5;
            continue;
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    out
}

const UNITS: &[&str] = &[
    "integerpoint",
    "feet",
    "sue",
    "digit",
    "pound",
    "meal",
    "edge",
    "student",
    "children ticket",
    "multiple",
    "east",
    "degree",
    "mph",
    "kmph",
    "ft",
    "m square",
    " m east",
    "sq m",
    "deg",
    "mile",
    "q .",
    "monkey",
    "prime",
    "ratio",
    "profit of rs",
    "rd",
    "o",
    "gm",
    "p . m",
    "lb",
    "tile",
    "per",
    "dm",
    "lt",
    "gain",
    "ab",
    "way",
    "west",
    "a .",
    "b .",
    "c .",
    "d .",
    "e .",
    "f .",
    "g .",
    "h .",
    "t",
    "h",
    "no change",
    "men",
    "soldier",
    "pie",
    "bc",
    "excess",
    "st",
    "inches",
    "noon",
    "cent",
    "by",
    "gal",
    "kmh",
    "c",
    "acre",
    "rise",
    "a . m",
    "th",
    "π r 2",
    "sq",
    "mark",
    "l",
    "toy",
    "coin",
    "sq . m",
    "gallon",
    "° f",
    "profit",
    "minw",
    "yr",
    "women",
    "am",
    "pm",
    "hr",
    "cu cm",
    "square",
    "v â € ™",
    "are",
    "rupee",
    "rounds",
    "cubic",
    "cc",
    "mtr",
    "s",
    "ohm",
    "number",
    "kmph",
    "day",
    "hour",
    "minute",
    "min",
    "second",
    "man",
    "woman",
    "sec",
    "cube",
    "mt",
    "sq inch",
    "mp",
    "∏ cm ³",
    "hectare",
    "more",
    "sec",
    "unit",
    "cu . m",
    "cm 2",
    "rs .",
    "rs",
    "kg",
    "g",
    "month",
    "km",
    "m",
    "cm",
    "mm",
    "apple",
    "liter",
    "loss",
    "yard",
    "pure",
    "year",
    "increase",
    "decrease",
    "d",
    "less",
    "Surface",
    "litre",
    "pi sq m",
    "s .",
    "metre",
    "meter",
    "inch",
];

/// Does `tail` match `\s*UNIT(s|es)?\s*$` for some unit?
fn is_unit_tail(tail: &str) -> bool {
    let t = tail.trim_start();
    let t = t.trim_end();
    // "\s*" before the unit may also be consumed by units beginning with a space
    for u in UNITS {
        for cand in [t, tail.trim_end()] {
            if let Some(r) = cand.strip_prefix(u) {
                if r.is_empty() || r == "s" || r == "es" {
                    return true;
                }
            }
        }
    }
    false
}

/// `(\d|\}|\s)\s*UNIT(s|es)?\s*$` -> keep the first character (leftmost match).
fn strip_unit_once(s: &str) -> String {
    for (i, c) in s.char_indices() {
        if c.is_ascii_digit() || c == '}' || c.is_whitespace() {
            let after = i + c.len_utf8();
            if is_unit_tail(&s[after..]) {
                let mut out = s[..after].to_string();
                if out.is_empty() {
                    out.push(c);
                }
                return out;
            }
        }
    }
    s.to_string()
}

/// `(\\(?:text|mbox){.*?})(\^\d|\{\^\d\})?$` -> "" (the first `\text{` / `\mbox{`
/// whose lazy group can reach the end of the string).
fn strip_text_suffix(s: &str) -> String {
    let ends_ok = |tail: &str| -> bool {
        // tail starts right after "\text{" ; needs ".*?}" then optional superscript, then end
        // "." does not match newlines (already replaced by spaces).
        if tail.contains('\n') {
            return false;
        }
        let b = tail.as_bytes();
        let n = b.len();
        if n >= 1 && b[n - 1] == b'}' {
            return true;
        }
        if n >= 3 && b[n - 3] == b'}' && b[n - 2] == b'^' && b[n - 1].is_ascii_digit() {
            return true;
        }
        false
    };
    let mut first: Option<usize> = None;
    for pat in ["\\text{", "\\mbox{"] {
        let mut from = 0;
        while let Some(p) = s[from..].find(pat) {
            let at = from + p;
            if ends_ok(&s[at + pat.len()..]) {
                first = Some(first.map_or(at, |f: usize| f.min(at)));
                break;
            }
            from = at + 1;
        }
    }
    match first {
        Some(at) => s[..at].to_string(),
        None => s.to_string(),
    }
}

fn units(s: &str) -> String {
    let mut text = s.to_string();
    let t = strip_text_suffix(&text);
    let t = t.trim().to_string();
    if !t.is_empty() && t != text {
        text = t;
    }
    for _ in 0..2 {
        let t = strip_unit_once(&text);
        if !t.is_empty() && t != text {
            text = t;
        }
    }
    text
}

/// The reference's malformed-operator fixes, in its order: `^(a)` -> `^{a}`,
/// then the rest ([`malformed_rest`]). Returns None for the rewrites we do not
/// reproduce (`sqrt(a)`, `\log_2 8` -> `\log_{2}{8}`).
fn malformed(s: &str) -> Option<String> {
    let s = caret_parens(s)?;
    if s.contains("sqrt(") || s.contains("sqrt (") || log_digits_rewritten(&s) {
        return None;
    }
    malformed_rest(&s)
}

/// The reference's `re.sub(r"\^\s?\((.*?)\)", r"^{\1}")`, one left-to-right pass:
/// each `^(` (one optional space between) up to the first `)` on the same line
/// becomes `^{...}`. None for other white space after `^` (`\s` is wider than ' ').
fn caret_parens(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    let mut copied = 0;
    while let Some(p) = s[i..].find('^') {
        let at = i + p;
        let mut j = at + 1;
        let next = s[j..].chars().next();
        if next.is_some_and(|c| c.is_whitespace() && c != ' ') {
            return None;
        }
        if next == Some(' ') {
            j += 1;
        }
        if b.get(j) == Some(&b'(') {
            // `.` stops at a line break: no `)` before it, no match here
            let body = &s[j + 1..];
            let close = body.find(')');
            let newline = body.find('\n');
            if let Some(c) = close.filter(|c| newline.map_or(true, |n| n > *c)) {
                out.push_str(&s[copied..at]);
                out.push_str("^{");
                out.push_str(&body[..c]);
                out.push('}');
                i = j + 1 + c + 1;
                copied = i;
                continue;
            }
        }
        i = at + 1;
    }
    out.push_str(&s[copied..]);
    Some(out)
}

/// Whether the reference's `\log_\s?(\d)\s?(\d+)` -> `\log_{a}{b}` rewrite
/// applies somewhere in `s`. Wider on purpose: any white space, any numeric char.
fn log_digits_rewritten(s: &str) -> bool {
    let ws = |c: &char| c.is_whitespace();
    let digit = |c: &char| c.is_numeric();
    s.match_indices("\\log_").any(|(at, m)| {
        let rest: Vec<char> = s[at + m.len()..].chars().take(4).collect();
        // the optional spaces taken or not: a digit, then a digit, with at most
        // one space before each
        let mut k = 0;
        if rest.get(k).is_some_and(ws) {
            k += 1;
        }
        if !rest.get(k).is_some_and(digit) {
            return false;
        }
        k += 1;
        rest.get(k).is_some_and(digit)
            || (rest.get(k).is_some_and(ws) && rest.get(k + 1).is_some_and(digit))
    })
}

/// `\frac12` -> `\frac{1}{2}`, `\sqrt3` -> `\sqrt{3}`, `a/b` of integers -> `\frac{a}{b}`.
/// Returns None for the malformed-operator patterns we do not reproduce.
fn malformed_rest(s: &str) -> Option<String> {
    // \frac not followed by '{' (after optional one space), or \frac{..}<digit>
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = s[from..].find("\\frac") {
        let at = from + p + 5;
        let mut j = at;
        if b.get(j) == Some(&b' ') {
            j += 1;
        }
        if b.get(j) != Some(&b'{') {
            return fix_digit_frac(s).and_then(|f| malformed_rest(&f));
        }
        // check `\frac{...}\s?\d` (lazy group up to the first '}' followed by an optional space and a digit)
        let mut k = j + 1;
        while k < s.len() {
            if b[k] == b'}' {
                let mut m = k + 1;
                if b.get(m) == Some(&b' ') {
                    m += 1;
                }
                if b.get(m).is_some_and(|c| c.is_ascii_digit()) {
                    return None;
                }
            }
            k += 1;
        }
        from = at;
    }
    // \sqrt<digit> or \sqrt <digit> -> \sqrt{d}; \sqrt<letter> handled by _fix_sqrt
    let mut out = String::with_capacity(s.len() + 4);
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with("\\sqrt") {
            let mut j = i + 5;
            while j < s.len() && b[j] == b' ' {
                j += 1;
            }
            if j < s.len() && b[j] != b'{' && b[j] != b'[' {
                if b[j] == b'\\' || !b[j].is_ascii() {
                    return None;
                }
                out.push_str("\\sqrt{");
                out.push(b[j] as char);
                out.push('}');
                i = j + 1;
                continue;
            }
            out.push_str("\\sqrt");
            i += 5;
            continue;
        }
        let c = s[i..].chars().next().unwrap();
        out.push(c);
        i += c.len_utf8();
    }
    // a/b with integers -> \frac{a}{b}
    let parts: Vec<&str> = out.split('/').collect();
    if parts.len() == 2 {
        if let (Ok(a), Ok(bb)) = (parts[0].parse::<i64>(), parts[1].parse::<i64>()) {
            if format!("{a}/{bb}") == out {
                return Some(format!("\\frac{{{a}}}{{{bb}}}"));
            }
        }
    }
    Some(out)
}

/// `\frac12` -> `\frac{1}{2}`, `\frac1{2}` -> `\frac{1}{2}` (first occurrence
/// of a `\frac` followed by a digit); None when it is another malformed form.
fn fix_digit_frac(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = s[from..].find("\\frac") {
        let at = from + p + 5;
        let mut j = at;
        if b.get(j) == Some(&b' ') {
            j += 1;
        }
        if b.get(j) == Some(&b'{') {
            from = at;
            continue;
        }
        if !b.get(j).is_some_and(|c| c.is_ascii_digit()) {
            return None;
        }
        let d = b[j] as char;
        let mut k = j + 1;
        if b.get(k) == Some(&b' ') {
            k += 1;
        }
        if b.get(k).is_some_and(|c| c.is_ascii_digit()) {
            let st = k;
            while b.get(k).is_some_and(|c| c.is_ascii_digit()) {
                k += 1;
            }
            return Some(format!("{}{{{}}}{{{}}}{}", &s[..at], d, &s[st..k], &s[k..]));
        }
        if b.get(k) == Some(&b'{') {
            let close = s[k..].find('}')? + k;
            return Some(format!(
                "{}{{{}}}{{{}}}{}",
                &s[..at],
                d,
                &s[k + 1..close],
                &s[close + 1..]
            ));
        }
        return None;
    }
    None
}

/// Normalise one extracted LaTeX answer. `None` means "contains a construct
/// whose normalisation is not reproduced here" (the caller leaves it undecided).
pub fn normalize(text: &str, boxed: BoxedMode) -> Option<String> {
    let t = extract_boxed(text, boxed);
    let t = basic_latex(&t)?;
    let t = units(&t);
    let mut t = t;
    if t.starts_with('.') {
        t.insert(0, '0');
    }
    if t == "0.5" {
        t = "\\frac{1}{2}".to_string();
    }
    let t = malformed(&t)?;
    Some(t.trim().to_string())
}

/// The index of the first byte at or after `i` that is not ASCII white space.
fn skip_ascii_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// The length of a leading "and" (3) or "or" (2) in `r`, else 0.
fn and_or_len(r: &str) -> usize {
    if r.starts_with("and") {
        3
    } else if r.starts_with("or") {
        2
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_last_and_all() {
        assert_eq!(
            extract_boxed("a \\boxed{1} b \\boxed{2}", BoxedMode::Last),
            "1,2"
        );
        assert_eq!(
            extract_boxed("\\boxed{1} is the first box, then a long stretch of unrelated prose goes on here for quite a while before \\boxed{2}", BoxedMode::Last),
            "2"
        );
        assert_eq!(
            extract_boxed("\\boxed{\\frac{1}{2}}", BoxedMode::Last),
            "\\frac{1}{2}"
        );
        assert_eq!(extract_boxed("\\boxed{1", BoxedMode::Last), "{1");
        assert_eq!(extract_boxed("no box", BoxedMode::Last), "no box");
    }

    #[test]
    fn normalizes_common_forms() {
        let n = |s: &str| normalize(s, BoxedMode::All).unwrap();
        assert_eq!(n("\\dfrac{1}{2}"), "\\frac{1}{2}");
        assert_eq!(n("\\frac12"), "\\frac{1}{2}");
        assert_eq!(n("100\\text{ square units}"), "100");
        assert_eq!(n("4t"), "4");
        assert_eq!(n("5 apples"), "5");
        assert_eq!(n("\\$6"), "6");
        assert_eq!(n("900,\\!000"), "900,000");
        assert_eq!(n("10{,}000"), "10,000");
        assert_eq!(n("\\left( 1, 2 \\right)"), "( 1, 2 )");
        assert_eq!(n("0.5"), "\\frac{1}{2}");
        assert_eq!(n(".5"), "\\frac{1}{2}");
        assert_eq!(n("5/4"), "\\frac{5}{4}");
        assert_eq!(n("\\sqrt2/2"), "\\sqrt{2}/2");
    }
}
