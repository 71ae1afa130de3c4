//! A small LaTeX answer parser: the subset of LaTeX that final answers use
//! (numbers, fractions, roots, powers, pi, e, percentages, degrees, sets,
//! tuples, intervals, equations, a word in `\text{}`), parsed into a tree that
//! can be evaluated exactly (rationals) or numerically.
//!
//! Anything outside the subset is `Unsupported`: the caller leaves the pair
//! undecided rather than guessing. Recursion depth is capped (`MAX_DEPTH`).

use std::cell::Cell;

use super::num::{parse_decimal, Rat};

thread_local! {
    /// `strict=True`: read the answer forms where math-verify's verdict is not the
    /// mathematical one as mathematics does (see `with_math_strict`).
    static MATH_STRICT: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with the strict reading on or off (restored afterwards). Strict:
/// `a \pmod{n}` is the residue a (math-verify: the set {a - n*o*d, a + n*o*d});
/// `\text{answer: X}` is X (math-verify: one symbol named "answer:X").
pub fn with_math_strict<T>(on: bool, f: impl FnOnce() -> T) -> T {
    let old = MATH_STRICT.with(|c| c.replace(on));
    let r = f();
    MATH_STRICT.with(|c| c.set(old));
    r
}

fn math_strict() -> bool {
    MATH_STRICT.with(|c| c.get())
}

pub const MAX_DEPTH: usize = 64;
/// Longest answer string the parser accepts (bytes); longer -> Unsupported.
pub const MAX_ANSWER_BYTES: usize = 2048;

#[derive(Clone, Debug, PartialEq)]
pub enum Fun {
    Floor,
    Ceil,
    Sin,
    Cos,
    Tan,
    Ln,
    Log10,
    Sec,
    Csc,
    Cot,
    Abs,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    /// literal number; `float` when written with a decimal point
    Num {
        v: Rat,
        float: bool,
    },
    Sym(String),
    Pi,
    E,
    Inf,
    Add(Vec<Node>),
    Mul(Vec<Node>),
    Neg(Box<Node>),
    Div(Box<Node>, Box<Node>),
    Pow(Box<Node>, Box<Node>),
    Root(Box<Node>, Box<Node>), // radicand, index
    Fact(Box<Node>),
    Func(Fun, Box<Node>),
    /// x% (the reference keeps x and an unevaluated 1/100)
    Pct(Box<Node>),
    /// an evaluated fraction of integers or a mixed number (atomic Rational)
    Frac(Rat),
    /// an undefined function applied to arguments (`f(x)`, `P(0)`, `\\binom{n}{2}`):
    /// never equal to a number, unknown against other expressions
    Opaque(String, Vec<Node>),
    /// log base b of x
    Log(Box<Node>, Box<Node>),
    /// `a \mod b` (sympy's Mod): evaluated for integers only
    Mod(Box<Node>, Box<Node>),
    /// `a \pm b`: the set {a - b, a + b} ({-b, b} without a); only at the top
    /// of an answer or of an equation's side
    PlusMinus(Option<Box<Node>>, Box<Node>),
}

impl Node {
    /// `terms` as one sum; a single term stands alone.
    pub fn sum(mut terms: Vec<Node>) -> Node {
        if terms.len() == 1 {
            terms.pop().unwrap()
        } else {
            Node::Add(terms)
        }
    }

    /// `factors` as one product; a single factor stands alone.
    pub fn product(mut factors: Vec<Node>) -> Node {
        if factors.len() == 1 {
            factors.pop().unwrap()
        } else {
            Node::Mul(factors)
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Expr(Node),
    /// a = b = c ...
    Eq(Vec<Node>),
    Set(Vec<Value>),
    Tuple(Vec<Value>),
    Interval {
        lo: Node,
        hi: Node,
        lo_open: bool,
        hi_open: bool,
    },
    /// a word: `\text{Evelyn}` or a single letter, lower-cased as the reference does
    Text(String),
    /// an inequality or a chain with one (`x \le 3`, `0 < n < 5`), as written:
    /// never equal to a number; equal to the same text. A single inequality
    /// also keeps its parts (op, lhs, rhs).
    Rel(String, Option<Box<RelParts>>),
    /// `(a, b) = (1, 2)`: an equation between tuples (lhs, rhs)
    TupleEq(Box<Value>, Box<Value>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PErr {
    /// outside the supported subset: undecided
    Unsupported,
    /// the reference's parser rejects this too (e.g. empty)
    Invalid,
}

type R<T> = Result<T, PErr>;

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(String),
    Letter(char),
    Cmd(String),
    Ch(char),
}

fn tokenize(s: &str) -> R<Vec<Tok>> {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            let st = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i < b.len() && b[i] == b'.' {
                if !b.get(i + 1).is_some_and(|d| d.is_ascii_digit()) {
                    return Err(PErr::Unsupported);
                }
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            out.push(Tok::Num(s[st..i].to_string()));
            continue;
        }
        if c.is_ascii_alphabetic() {
            out.push(Tok::Letter(c as char));
            i += 1;
            continue;
        }
        if c == b'\\' {
            let st = i + 1;
            let mut j = st;
            while j < b.len() && b[j].is_ascii_alphabetic() {
                j += 1;
            }
            if j == st {
                // escaped symbol: \{ \} \% \, \; \! \  \|
                let Some(&n) = b.get(st) else {
                    return Err(PErr::Unsupported);
                };
                match n {
                    b'{' | b'}' | b'%' => out.push(Tok::Cmd((n as char).to_string())),
                    b',' | b';' | b':' | b' ' => {}
                    _ => return Err(PErr::Unsupported),
                }
                i = st + 1;
                continue;
            }
            let name = &s[st..j];
            match name {
                "quad" | "qquad" => {}
                "vert" | "lvert" | "rvert" => out.push(Tok::Ch('|')),
                // an equation sign to the reference (Eq, chained like `=`)
                "equiv" => out.push(Tok::Ch('=')),
                // the reference's lexer has no \cdots: it reads \cdot and a symbol s
                "cdots" => {
                    out.push(Tok::Cmd("cdot".into()));
                    out.push(Tok::Letter('s'));
                }
                _ => out.push(Tok::Cmd(name.to_string())),
            }
            i = j;
            continue;
        }
        match c {
            b'!' if b.get(i + 1) == Some(&b'=') => {
                out.push(Tok::Cmd("neq".into()));
                i += 2;
            }
            b'<' | b'>' if b.get(i + 1) == Some(&b'=') => {
                out.push(Tok::Cmd(if c == b'<' { "le" } else { "ge" }.into()));
                i += 2;
            }
            b'+' | b'-' | b'*' | b'/' | b'^' | b'(' | b')' | b'[' | b']' | b'{' | b'}' | b','
            | b'=' | b'!' | b'%' | b'_' | b'<' | b'>' | b'|' | b':' | b';' => {
                out.push(Tok::Ch(c as char));
                i += 1;
            }
            _ => return Err(PErr::Unsupported),
        }
    }
    Ok(out)
}

struct P {
    t: Vec<Tok>,
    i: usize,
    depth: usize,
}

fn num_node(s: &str) -> R<Node> {
    let v = parse_decimal(s).ok_or(PErr::Unsupported)?;
    Ok(Node::Num {
        v,
        float: s.contains('.'),
    })
}

impl P {
    fn peek(&self) -> Option<&Tok> {
        self.t.get(self.i)
    }
    fn peek_at(&self, k: usize) -> Option<&Tok> {
        self.t.get(self.i + k)
    }
    fn is_ch(&self, c: char) -> bool {
        matches!(self.peek(), Some(Tok::Ch(x)) if *x == c)
    }
    fn is_cmd(&self, c: &str) -> bool {
        matches!(self.peek(), Some(Tok::Cmd(x)) if x == c)
    }
    fn eat_ch(&mut self, c: char) -> bool {
        if self.is_ch(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }
    fn expect_ch(&mut self, c: char) -> R<()> {
        if self.eat_ch(c) {
            Ok(())
        } else {
            Err(PErr::Unsupported)
        }
    }
    fn enter(&mut self) -> R<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(PErr::Unsupported);
        }
        Ok(())
    }

    fn expr(&mut self) -> R<Node> {
        self.enter()?;
        let mut terms = vec![self.term()?];
        loop {
            if self.eat_ch('+') {
                terms.push(self.term()?);
            } else if self.eat_ch('-') {
                let t = self.term()?;
                terms.push(Node::Neg(Box::new(t)));
            } else {
                break;
            }
        }
        self.depth -= 1;
        Ok(Node::sum(terms))
    }

    /// Degrees, `^\circ` or `^{\circ}`: the reference drops them (no conversion).
    fn eat_degrees(&mut self) -> bool {
        if !self.is_ch('^') {
            return false;
        }
        let n = match self.peek_at(1) {
            Some(Tok::Cmd(c)) if c == "circ" => 2,
            Some(Tok::Ch('{'))
                if matches!(self.peek_at(2), Some(Tok::Cmd(c)) if c == "circ")
                    && matches!(self.peek_at(3), Some(Tok::Ch('}'))) =>
            {
                4
            }
            _ => return false,
        };
        self.i += n;
        true
    }

    /// A power, subscript or factorial right after a function's bare argument
    /// (`\ln e^2`, `\log_2 x_1`): the reference applies it inside the argument.
    fn continues_bare_arg(&self) -> bool {
        self.is_ch('^') || self.is_ch('_') || self.is_ch('!') || self.is_ch('\'')
    }

    /// A one-token bare argument with its power, as the reference reads it
    /// (`\ln e^2` is ln(e**2), `\log_2 2^{3}` is log(2**3, 2)); anything else
    /// that would continue the argument is not reproduced.
    fn bare_power(&mut self, arg: Node) -> R<Node> {
        let degrees = self.eat_degrees();
        let arg = if !degrees && self.eat_ch('^') {
            let e = self.group()?;
            Node::Pow(Box::new(arg), Box::new(e))
        } else {
            arg
        };
        if self.continues_bare_arg() {
            return Err(PErr::Unsupported);
        }
        Ok(arg)
    }

    fn starts_factor(&self) -> bool {
        match self.peek() {
            Some(Tok::Num(_)) | Some(Tok::Letter(_)) => true,
            Some(Tok::Ch('(')) | Some(Tok::Ch('{')) => true,
            Some(Tok::Cmd(c)) => {
                is_greek(c)
                    || matches!(
                        c.as_str(),
                        "frac"
                            | "sqrt"
                            | "pi"
                            | "infty"
                            | "sin"
                            | "cos"
                            | "tan"
                            | "sec"
                            | "csc"
                            | "cot"
                            | "ln"
                            | "log"
                            | "text"
                            | "triangle"
                            | "angle"
                            | "ell"
                            | "overline"
                            | "overrightarrow"
                            | "vec"
                            | "lfloor"
                            | "lceil"
                            | "binom"
                    )
            }
            _ => false,
        }
    }

    fn term(&mut self) -> R<Node> {
        self.enter()?;
        let mut f = vec![self.unary()?];
        loop {
            if self.eat_ch('*')
                || (self.is_cmd("cdot") || self.is_cmd("times")) && {
                    self.i += 1;
                    true
                }
            {
                f.push(self.unary()?);
            } else if self.eat_ch('/')
                || self.is_cmd("div") && {
                    self.i += 1;
                    true
                }
            {
                let den = self.unary()?;
                let num = Node::product(std::mem::take(&mut f));
                f = vec![Node::Div(Box::new(num), Box::new(den))];
            } else if self.starts_factor() {
                // implicit multiplication; "2 3", "2(3)" and "1 000" are read
                // unexpectedly by the reference: leave them undecided
                let prev = self.t.get(self.i.wrapping_sub(1)).cloned();
                // an integer exponent ends the power: 2^3 4 is 2**3*4 to the reference
                let after_exponent = self.i >= 2
                    && self.t[self.i - 2] == Tok::Ch('^')
                    && matches!(&prev, Some(Tok::Num(x)) if !x.contains('.'));
                let prev_is_num = matches!(prev, Some(Tok::Num(_))) && !after_exponent;
                if prev_is_num && matches!(self.peek(), Some(Tok::Num(_))) {
                    return Err(PErr::Unsupported);
                }
                if self.is_ch('(') {
                    // 2(x+1) is a product; 2(3) (handled as a sum) and 2.5(3) are not reproduced
                    let lone = matches!(self.peek_at(1), Some(Tok::Num(_)))
                        && matches!(self.peek_at(2), Some(Tok::Ch(')')));
                    let float_prev = matches!(&prev, Some(Tok::Num(x)) if x.contains('.'));
                    if prev_is_num && (lone || float_prev) {
                        return Err(PErr::Unsupported);
                    }
                }
                f.push(self.postfix()?);
            } else {
                break;
            }
        }
        self.depth -= 1;
        Ok(Node::product(f))
    }

    fn unary(&mut self) -> R<Node> {
        self.enter()?;
        let r = if self.eat_ch('-') {
            let u = self.unary()?;
            match u {
                Node::Num { v, float } => Node::Num {
                    v: v.negate().ok_or(PErr::Unsupported)?,
                    float,
                },
                Node::Frac(v) => Node::Frac(v.negate().ok_or(PErr::Unsupported)?),
                other => Node::Neg(Box::new(other)),
            }
        } else if self.eat_ch('+') {
            self.unary()?
        } else {
            self.postfix()?
        };
        self.depth -= 1;
        Ok(r)
    }

    fn group(&mut self) -> R<Node> {
        // {expr} or a single token
        if self.eat_ch('{') {
            let e = self.expr()?;
            self.expect_ch('}')?;
            return Ok(e);
        }
        match self.peek().cloned() {
            Some(Tok::Num(s)) => {
                // the reference reads 2^2004 as 2**2004 (the whole number)
                self.i += 1;
                num_node(&s)
            }
            Some(Tok::Letter(c)) => {
                self.i += 1;
                letter_node(c)
            }
            Some(Tok::Cmd(c)) if c == "pi" => {
                self.i += 1;
                Ok(Node::Pi)
            }
            _ => Err(PErr::Unsupported),
        }
    }

    fn postfix(&mut self) -> R<Node> {
        self.enter()?;
        let mut base = self.primary()?;
        loop {
            if self.eat_degrees() {
                continue;
            }
            if self.is_ch('^') {
                self.i += 1;
                let e = self.group()?;
                base = Node::Pow(Box::new(base), Box::new(e));
            } else if self.is_ch('!') {
                self.i += 1;
                base = Node::Fact(Box::new(base));
            } else if self.is_cmd("%") || self.is_ch('%') {
                self.i += 1;
                base = Node::Pct(Box::new(base));
            } else {
                break;
            }
        }
        self.depth -= 1;
        Ok(base)
    }

    fn primary(&mut self) -> R<Node> {
        self.enter()?;
        let tok = self.peek().cloned().ok_or(PErr::Unsupported)?;
        let r = match tok {
            Tok::Num(s) => {
                self.i += 1;
                if self.is_ch('_') {
                    // a base subscript (221_3, 1121_{10}) is dropped by the reference
                    self.i += 1;
                    self.subscript_text()?;
                }
                // "2(3)" is read as 2 + 3 by the reference
                if !s.contains('.')
                    && self.is_ch('(')
                    && matches!(self.peek_at(1), Some(Tok::Num(x)) if !x.contains('.'))
                    && matches!(self.peek_at(2), Some(Tok::Ch(')')))
                {
                    let Some(Tok::Num(x)) = self.peek_at(1).cloned() else {
                        unreachable!()
                    };
                    self.i += 3;
                    let a = parse_decimal(&s).ok_or(PErr::Unsupported)?;
                    let b = parse_decimal(&x).ok_or(PErr::Unsupported)?;
                    return Ok(Node::Frac(a.plus(b).ok_or(PErr::Unsupported)?));
                }
                let n = num_node(&s)?;
                // mixed number: 2\frac{1}{2}
                if !s.contains('.') && self.is_cmd("frac") {
                    let save = self.i;
                    self.i += 1;
                    let a = self.group_int();
                    let b = if a.is_some() { self.group_int() } else { None };
                    match (a, b) {
                        (Some(a), Some(b)) if b != 0 => {
                            let whole = parse_decimal(&s).ok_or(PErr::Unsupported)?;
                            let fr = Rat::new(a, b).ok_or(PErr::Unsupported)?;
                            let v = whole.plus(fr).ok_or(PErr::Unsupported)?;
                            Node::Frac(v)
                        }
                        _ => {
                            self.i = save;
                            n
                        }
                    }
                } else {
                    n
                }
            }
            Tok::Letter(c) => {
                // a letter right after another one ends a word ("gcd(6, 43)"), which
                // the reference may read as a named function or reject
                let after_letter = self.i > 0 && matches!(self.t[self.i - 1], Tok::Letter(_));
                self.i += 1;
                let mut node = letter_node(c)?;
                if self.is_ch('_') {
                    // x_1, x_{10}: one symbol
                    self.i += 1;
                    if c == 'e' {
                        return Err(PErr::Unsupported);
                    }
                    let save = self.i;
                    match self.subscript_text() {
                        Ok(sub) => {
                            node = Node::Sym(format!("{}_{sub}", c.to_ascii_lowercase()));
                        }
                        Err(_) => {
                            // a_{n-1}, p_{a,b}: one symbol named after the raw text,
                            // whose exact name is not reproduced: an opaque atom that
                            // is never equal to a number and unknown against symbols
                            self.i = save;
                            let sub = self.skip_braced()?;
                            node = Node::Opaque(format!("{c}_{{{sub}}}"), Vec::new());
                        }
                    }
                }
                if self.is_ch('(') {
                    // f(x), P(0): an undefined function of a single atom;
                    // a(b+c) is a product in the reference
                    let single = matches!(
                        (self.peek_at(1), self.peek_at(2)),
                        (Some(Tok::Num(_)) | Some(Tok::Letter(_)), Some(Tok::Ch(')')))
                    );
                    // f(2015, 2), a(1, 2): an undefined function of several atoms
                    let mut k = 1;
                    while matches!(self.peek_at(k), Some(Tok::Num(_)) | Some(Tok::Letter(_)))
                        && matches!(self.peek_at(k + 1), Some(Tok::Ch(',')))
                    {
                        k += 2;
                    }
                    let multi = k > 1
                        && !after_letter
                        && matches!(self.peek_at(k), Some(Tok::Num(_)) | Some(Tok::Letter(_)))
                        && matches!(self.peek_at(k + 1), Some(Tok::Ch(')')));
                    if single || multi {
                        self.i += 1;
                        let mut args = vec![self.primary()?];
                        while self.eat_ch(',') {
                            args.push(self.primary()?);
                        }
                        self.expect_ch(')')?;
                        let name = match &node {
                            Node::Sym(n) => n.clone(),
                            Node::Opaque(n, _) => n.clone(),
                            _ => "e".to_string(),
                        };
                        node = Node::Opaque(name, args);
                    }
                }
                node
            }
            Tok::Ch('(') => {
                self.i += 1;
                let e = self.expr()?;
                self.expect_ch(')')?;
                e
            }
            // |x| is Abs(x) in the reference; bars are never implicit factors here,
            // so "|a||b|" and "|a|b|" stay unsupported instead of being guessed
            Tok::Ch('|') => {
                self.i += 1;
                let e = self.expr()?;
                self.expect_ch('|')?;
                Node::Func(Fun::Abs, Box::new(e))
            }
            Tok::Ch('{') => {
                self.i += 1;
                let e = self.expr()?;
                self.expect_ch('}')?;
                e
            }
            Tok::Cmd(c) => {
                self.i += 1;
                match c.as_str() {
                    "pi" => Node::Pi,
                    g if is_greek(g) => {
                        let mut name = c.clone();
                        if self.is_ch('_') {
                            self.i += 1;
                            let sub = self.subscript_text()?;
                            name = format!("{name}_{sub}");
                        }
                        Node::Sym(name)
                    }
                    // named objects the reference reads as plain symbols
                    "triangle" | "angle" | "ell" => {
                        if self.is_ch('(') {
                            // \ell(n): an undefined function
                            let single = matches!(
                                (self.peek_at(1), self.peek_at(2)),
                                (Some(Tok::Num(_)) | Some(Tok::Letter(_)), Some(Tok::Ch(')')))
                            );
                            if !single {
                                return Err(PErr::Unsupported);
                            }
                            self.i += 1;
                            let arg = self.primary()?;
                            self.expect_ch(')')?;
                            Node::Opaque(c.clone(), vec![arg])
                        } else {
                            Node::Sym(c.clone())
                        }
                    }
                    // \overline{AB}, \vec{v}, \text{cm}: one symbol named after the content
                    "overline" | "overrightarrow" | "vec" | "text" => {
                        let word = self.brace_word()?;
                        let prefix = match c.as_str() {
                            "overline" => "bar",
                            "text" => "",
                            _ => "vec",
                        };
                        let mut name = if prefix.is_empty() {
                            word
                        } else {
                            format!("{prefix}{{{word}}}")
                        };
                        // \overline{r}_1: one symbol, as for a letter
                        if !prefix.is_empty() && self.is_ch('_') {
                            self.i += 1;
                            name = format!("{name}_{}", self.subscript_text()?);
                        }
                        Node::Sym(name)
                    }
                    "lfloor" | "lceil" => {
                        let close = if c == "lfloor" { "rfloor" } else { "rceil" };
                        let e = self.expr()?;
                        if !self.is_cmd(close) {
                            return Err(PErr::Unsupported);
                        }
                        self.i += 1;
                        Node::Func(
                            if c == "lfloor" { Fun::Floor } else { Fun::Ceil },
                            Box::new(e),
                        )
                    }
                    "infty" => Node::Inf,
                    "gcd" => self.gcd()?,
                    "frac" => {
                        let save = self.i;
                        if let (Some(a), Some(b)) = (self.group_int(), self.group_int()) {
                            if b == 0 {
                                return Err(PErr::Unsupported);
                            }
                            Node::Frac(Rat::new(a, b).ok_or(PErr::Unsupported)?)
                        } else {
                            self.i = save;
                            let a = self.brace_expr()?;
                            let b = self.brace_expr()?;
                            Node::Div(Box::new(a), Box::new(b))
                        }
                    }
                    "sqrt" => {
                        if self.eat_ch('[') {
                            let idx = self.expr()?;
                            self.expect_ch(']')?;
                            let a = self.brace_expr()?;
                            Node::Root(Box::new(a), Box::new(idx))
                        } else {
                            let a = self.brace_expr()?;
                            Node::Root(
                                Box::new(a),
                                Box::new(Node::Num {
                                    v: Rat::int(2),
                                    float: false,
                                }),
                            )
                        }
                    }
                    "binom" | "dbinom" | "tbinom" => {
                        let save = self.i;
                        if let (Some(a), Some(b)) = (self.group_int(), self.group_int()) {
                            Node::Frac(binom(a, b).ok_or(PErr::Unsupported)?)
                        } else {
                            self.i = save;
                            let a = self.brace_expr()?;
                            let b = self.brace_expr()?;
                            Node::Opaque("binomial".into(), vec![a, b])
                        }
                    }
                    "log" if self.is_ch('_') => {
                        self.i += 1;
                        // a bare letter base (`\log_e`) is read differently
                        if matches!(self.peek(), Some(Tok::Letter(_))) {
                            return Err(PErr::Unsupported);
                        }
                        let base = self.group()?;
                        let bare_arg = !self.is_ch('(') && !self.is_ch('{');
                        let arg = if self.is_ch('{') {
                            self.brace_expr()?
                        } else if self.is_ch('(') {
                            self.i += 1;
                            let e = self.expr()?;
                            self.expect_ch(')')?;
                            e
                        } else {
                            match self.peek().cloned() {
                                Some(Tok::Num(s)) => {
                                    self.i += 1;
                                    num_node(&s)?
                                }
                                Some(Tok::Letter(ch)) => {
                                    self.i += 1;
                                    letter_node(ch)?
                                }
                                _ => return Err(PErr::Unsupported),
                            }
                        };
                        let arg = if bare_arg { self.bare_power(arg)? } else { arg };
                        Node::Log(Box::new(arg), Box::new(base))
                    }
                    "sin" | "cos" | "tan" | "sec" | "csc" | "cot" | "ln" | "log" => {
                        let f = match c.as_str() {
                            "sin" => Fun::Sin,
                            "cos" => Fun::Cos,
                            "tan" => Fun::Tan,
                            "sec" => Fun::Sec,
                            "csc" => Fun::Csc,
                            "cot" => Fun::Cot,
                            "ln" => Fun::Ln,
                            _ => Fun::Log10,
                        };
                        // \sin^2 x is sin(x)**2 in the reference
                        let mut power = None;
                        if self.is_ch('^') && !matches!(f, Fun::Ln | Fun::Log10) {
                            self.i += 1;
                            power = Some(self.group()?);
                        }
                        let bare_arg = !self.is_ch('(') && !self.is_ch('{');
                        let arg = if self.is_ch('(') {
                            self.i += 1;
                            let e = self.expr()?;
                            self.expect_ch(')')?;
                            e
                        } else if self.is_ch('{') {
                            self.brace_expr()?
                        } else {
                            let one = |p: &mut P| -> R<Option<Node>> {
                                Ok(match p.peek().cloned() {
                                    Some(Tok::Letter(ch)) => {
                                        p.i += 1;
                                        Some(letter_node(ch)?)
                                    }
                                    Some(Tok::Cmd(g)) if is_greek(&g) => {
                                        p.i += 1;
                                        Some(Node::Sym(g))
                                    }
                                    _ => None,
                                })
                            };
                            match self.peek().cloned() {
                                Some(Tok::Num(s)) => {
                                    self.i += 1;
                                    let n = num_node(&s)?;
                                    // \cos 2\theta is cos(2 theta)
                                    match one(self)? {
                                        Some(x) => Node::Mul(vec![n, x]),
                                        None => self.bare_power(n)?,
                                    }
                                }
                                _ => {
                                    let x = one(self)?.ok_or(PErr::Unsupported)?;
                                    self.bare_power(x)?
                                }
                            }
                        };
                        // the reference's argument without parentheses is a whole
                        // product (\sin 2x is sin(2x)) that stops at the next function
                        // (\cos y \cos z): only a one-token argument is reproduced
                        if bare_arg
                            && (self.continues_bare_arg()
                                || self.starts_factor()
                                    && !matches!(self.peek(), Some(Tok::Cmd(n)) if is_function(n)))
                        {
                            return Err(PErr::Unsupported);
                        }
                        let node = Node::Func(f, Box::new(arg));
                        match power {
                            Some(p) => Node::Pow(Box::new(node), Box::new(p)),
                            None => node,
                        }
                    }
                    _ => return Err(PErr::Unsupported),
                }
            }
            _ => return Err(PErr::Unsupported),
        };
        self.depth -= 1;
        Ok(r)
    }

    /// `{letters and digits}` as one lower-case word (spaces dropped)
    fn brace_word(&mut self) -> R<String> {
        self.expect_ch('{')?;
        let mut out = String::new();
        loop {
            match self.peek().cloned() {
                Some(Tok::Letter(c)) => out.push(c.to_ascii_lowercase()),
                Some(Tok::Num(n)) => out.push_str(&n),
                Some(Tok::Ch('}')) => {
                    self.i += 1;
                    break;
                }
                _ => return Err(PErr::Unsupported),
            }
            self.i += 1;
        }
        if out.is_empty() || out.len() > 64 {
            return Err(PErr::Unsupported);
        }
        Ok(out)
    }

    /// the text of a subscript: one token, or `{letters/digits}`
    fn subscript_text(&mut self) -> R<String> {
        match self.peek().cloned() {
            Some(Tok::Num(n)) => {
                self.i += 1;
                // x_12 is x_1 followed by 2 in LaTeX: not reproduced
                if n.len() > 1 {
                    return Err(PErr::Unsupported);
                }
                Ok(n)
            }
            Some(Tok::Letter(c)) => {
                self.i += 1;
                Ok(c.to_string())
            }
            Some(Tok::Ch('{')) => {
                self.i += 1;
                let mut out = String::new();
                loop {
                    match self.peek().cloned() {
                        Some(Tok::Num(n)) => out.push_str(&n),
                        Some(Tok::Letter(c)) => out.push(c),
                        Some(Tok::Ch('}')) => {
                            self.i += 1;
                            break;
                        }
                        _ => return Err(PErr::Unsupported),
                    }
                    self.i += 1;
                }
                if out.is_empty() {
                    return Err(PErr::Unsupported);
                }
                Ok(format!("{{{out}}}"))
            }
            _ => Err(PErr::Unsupported),
        }
    }

    /// `\gcd(a, b, ...)` after the command: the reference evaluates it (sympy's
    /// gcd, unevaluated-wrapped): of integers, or of distinct lone symbols and
    /// nonzero integers (a polynomial gcd, 1)
    fn gcd(&mut self) -> R<Node> {
        self.expect_ch('(')?;
        let mut args = vec![self.expr()?];
        while self.eat_ch(',') {
            args.push(self.expr()?);
        }
        self.expect_ch(')')?;
        let mut g: i128 = 0;
        let mut syms: Vec<&String> = Vec::new();
        for a in &args {
            match a {
                Node::Num { v, float: false } if v.is_int() && v.n != 0 => {
                    let (mut x, mut y) = (g, v.n.abs());
                    while y != 0 {
                        (x, y) = (y, x % y);
                    }
                    g = x;
                }
                Node::Sym(s) if !syms.contains(&s) => syms.push(s),
                _ => return Err(PErr::Unsupported),
            }
        }
        if !syms.is_empty() {
            g = 1;
        }
        if args.len() < 2 {
            return Err(PErr::Unsupported);
        }
        Ok(Node::Mul(vec![Node::Frac(Rat::int(g))]))
    }

    /// `{...}` with balanced braces, skipped; returns its tokens as text
    fn skip_braced(&mut self) -> R<String> {
        self.expect_ch('{')?;
        let mut depth = 1usize;
        let mut text = String::new();
        while let Some(t) = self.peek().cloned() {
            self.i += 1;
            match &t {
                Tok::Ch('{') => depth += 1,
                Tok::Ch('}') => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(text);
                    }
                }
                _ => {}
            }
            match t {
                Tok::Num(n) => text.push_str(&n),
                Tok::Letter(c) | Tok::Ch(c) => text.push(c),
                Tok::Cmd(c) => {
                    text.push('\\');
                    text.push_str(&c);
                    text.push(' ');
                }
            }
        }
        Err(PErr::Unsupported)
    }

    fn brace_expr(&mut self) -> R<Node> {
        self.expect_ch('{')?;
        let e = self.expr()?;
        self.expect_ch('}')?;
        Ok(e)
    }

    /// `{int}` with an optional sign, exactly; restores nothing on failure (caller saves)
    fn group_int(&mut self) -> Option<i128> {
        if !self.eat_ch('{') {
            return None;
        }
        let neg = self.eat_ch('-');
        let v = match self.peek().cloned() {
            Some(Tok::Num(s)) if !s.contains('.') && s.len() <= 30 => {
                self.i += 1;
                s.parse::<i128>().ok()?
            }
            _ => return None,
        };
        if !self.eat_ch('}') {
            return None;
        }
        Some(if neg { -v } else { v })
    }
}

fn is_greek(c: &str) -> bool {
    matches!(
        c,
        "alpha"
            | "beta"
            | "gamma"
            | "delta"
            | "theta"
            | "phi"
            | "omega"
            | "lambda"
            | "mu"
            | "sigma"
            | "tau"
            | "rho"
            | "psi"
            | "chi"
            | "eta"
            | "zeta"
            | "kappa"
            | "nu"
            | "xi"
            | "epsilon"
            | "varepsilon"
            | "varphi"
            | "vartheta"
    )
}

fn is_function(c: &str) -> bool {
    matches!(
        c,
        "sin" | "cos" | "tan" | "sec" | "csc" | "cot" | "ln" | "log"
    )
}

fn binom(n: i128, k: i128) -> Option<Rat> {
    if !(0..=200).contains(&n) || k < 0 || k > n {
        return if (0..=200).contains(&n) && (k < 0 || k > n) {
            Some(Rat::int(0))
        } else {
            None
        };
    }
    let mut r = Rat::int(1);
    for j in 0..k {
        r = r.times(Rat::new(n - j, j + 1)?)?;
    }
    Some(r)
}

fn letter_node(c: char) -> R<Node> {
    match c {
        // lower-case e is Euler's number; upper-case letters become lower-case
        // symbols (E is then a symbol named "e", not Euler's number)
        'e' => Ok(Node::E),
        // a lower-case i is a plain symbol in the reference (complex-valued when the
        // text has a standalone i, see `compare::with_options`); upper-case I is
        // sympy's imaginary unit
        'I' => Err(PErr::Unsupported),
        c if c.is_ascii_lowercase() => Ok(Node::Sym(c.to_string())),
        c if c.is_ascii_uppercase() => Ok(Node::Sym(format!("{}", c.to_ascii_lowercase()))),
        _ => Err(PErr::Unsupported),
    }
}

fn parse_expr_tokens(t: Vec<Tok>) -> R<Node> {
    if t.is_empty() {
        return Err(PErr::Invalid);
    }
    let mut p = P { t, i: 0, depth: 0 };
    let e = p.expr()?;
    if p.i != p.t.len() {
        return Err(PErr::Unsupported);
    }
    Ok(e)
}

/// Split at top-level occurrences of `sep` (outside (), [], {}).
fn split_top(s: &str, sep: u8) -> Option<Vec<&str>> {
    let b = s.as_bytes();
    let mut depth: i64 = 0;
    let mut parts = Vec::new();
    let mut st = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if i + 1 < b.len() && (b[i + 1] == b'{' || b[i + 1] == b'}') => {
                depth += if b[i + 1] == b'{' { 1 } else { -1 };
                i += 2;
                continue;
            }
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            c if c == sep && depth == 0 => {
                parts.push(&s[st..i]);
                st = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return None;
        }
        i += 1;
    }
    parts.push(&s[st..]);
    Some(parts)
}

fn is_rel_tok(t: &Tok) -> bool {
    match t {
        Tok::Ch('<') | Tok::Ch('>') => true,
        Tok::Cmd(c) => matches!(
            c.as_str(),
            "le" | "leq" | "ge" | "geq" | "ne" | "neq" | "lt" | "gt" | "leqslant" | "geqslant"
        ),
        _ => false,
    }
}

/// Does `s` use the command `\\name` (not a longer command such as `\\infty` for `\\in`)?
pub fn has_cmd(s: &str, name: &str) -> bool {
    let pat = format!("\\{name}");
    let b = s.as_bytes();
    let mut from = 0;
    while let Some(p) = s[from..].find(&pat) {
        let end = from + p + pat.len();
        if !b.get(end).is_some_and(|c| c.is_ascii_alphabetic()) {
            return true;
        }
        from = end;
    }
    false
}

fn relation(s: &str) -> R<Value> {
    // 4:30 is the ratio 4/30 (an evaluated Rational) in the reference
    if let Some((a, b)) = s.trim().split_once(':') {
        if is_digits(a) && is_digits(b) && a.len() <= 18 && b.len() <= 18 {
            let (a, b) = (a.parse::<i128>().unwrap(), b.parse::<i128>().unwrap());
            if b == 0 {
                return Err(PErr::Unsupported);
            }
            return Ok(Value::Expr(Node::Frac(
                Rat::new(a, b).ok_or(PErr::Unsupported)?,
            )));
        }
    }
    // answer: 18 is (a n s w e r) / 18 in the reference (':' divides)
    if let Some((a, b)) = s.trim().split_once(':') {
        let (a, b) = (a.trim(), b.trim());
        if !a.is_empty()
            && a.len() <= 32
            && a.bytes().all(|c| c.is_ascii_alphabetic() && c != b'I')
            && is_digits(b)
            && b.len() <= 18
            && b.bytes().any(|c| c != b'0')
        {
            let letters: R<Vec<Node>> = a.chars().map(letter_node).collect();
            let den = num_node(b)?;
            return Ok(Value::Expr(Node::Div(
                Box::new(Node::Mul(letters?)),
                Box::new(den),
            )));
        }
    }
    // AEIF: a product of letters with one upper-case I, sympy's imaginary unit
    // (never equal to a number; unknown against symbols)
    let w = s.trim();
    if !w.is_empty()
        && w.len() <= 32
        && w.bytes().all(|c| c.is_ascii_alphabetic())
        && w.bytes().filter(|&c| c == b'I').count() == 1
    {
        let nodes: R<Vec<Node>> = w
            .chars()
            .map(|c| {
                if c == 'I' {
                    Ok(Node::Opaque("I".into(), Vec::new()))
                } else {
                    letter_node(c)
                }
            })
            .collect();
        return Ok(Value::Expr(Node::product(nodes?)));
    }
    let is_text = s.trim().starts_with("\\text{");
    if !is_text
        && (["mp", "in", "cup", "cap", "setminus", "mid"]
            .iter()
            .any(|c| has_cmd(s, c))
            || s.contains(':')
            || s.contains(';')
            || s.contains("\\|"))
    {
        return Err(PErr::Unsupported);
    }
    // strict: "a \pmod{n}" answers with the residue a
    if math_strict() && s.matches("\\pmod").count() == 1 {
        if let Some((a, _)) = s.split_once("\\pmod") {
            if !a.trim().is_empty() {
                return relation(a.trim());
            }
        }
    }
    // the reference's lexer reads \pmod{n} as \pm o d n
    let rewritten;
    let s = if has_cmd(s, "pmod") {
        rewritten = s.replace("\\pmod", "\\pm od ");
        rewritten.as_str()
    } else {
        s
    };
    // a lone \text{word}
    let t = s.trim();
    if let Some(inner) = t.strip_prefix("\\text{").and_then(|r| r.strip_suffix('}')) {
        if !inner.is_empty()
            && inner.chars().all(|c| c.is_ascii_alphabetic() || c == ' ')
            && !inner.trim().is_empty()
        {
            let w: String = inner
                .chars()
                .filter(|c| *c != ' ')
                .collect::<String>()
                .to_lowercase();
            return Ok(Value::Text(w));
        }
        // \text{(B)}: the choice letter
        if let Some(w) = inner.strip_prefix('(').and_then(|r| r.strip_suffix(')')) {
            if w.len() == 1 && w.bytes().all(|c| c.is_ascii_alphabetic()) {
                return Ok(Value::Text(w.to_lowercase()));
            }
        }
        // strict: \text{answer: 12} answers 12
        if math_strict() {
            let lower = inner.trim_start().to_ascii_lowercase();
            if let Some(rest) = lower.strip_prefix("answer:") {
                let at = inner.len() - rest.len();
                if !rest.trim().is_empty() {
                    return relation(inner[at..].trim());
                }
            }
        }
        // \text{answer: 12}: one symbol named after the text (never a number)
        if inner.bytes().any(|c| c.is_ascii_alphabetic())
            && inner
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b" :-.".contains(&c))
        {
            return Ok(Value::Expr(Node::Opaque(
                format!("text:{inner}"),
                Vec::new(),
            )));
        }
        return Err(PErr::Unsupported);
    }
    // a single letter (upper case is lower-cased by the reference)
    if t.len() == 1 && t.as_bytes()[0].is_ascii_alphabetic() {
        let c = t.as_bytes()[0] as char;
        if c == 'e' {
            // Euler's number in the reference
            return Ok(Value::Expr(Node::E));
        }
        if c == 'I' {
            return Err(PErr::Unsupported);
        }
        return Ok(Value::Text(c.to_ascii_lowercase().to_string()));
    }
    let mut toks = tokenize(t)?;
    // "= 3" reads as 3
    if matches!(toks.first(), Some(Tok::Ch('='))) {
        toks.remove(0);
    }
    let is_approx = |t: &Tok| matches!(t, Tok::Cmd(c) if c == "approx");
    let has_ineq = toks.iter().any(is_rel_tok);
    let has_eq = toks.iter().any(|t| matches!(t, Tok::Ch('=')));
    let has_approx = toks.iter().any(is_approx);
    if has_ineq || has_eq || has_approx {
        let mut parts: Vec<Vec<Tok>> = vec![Vec::new()];
        let mut ops: Vec<Tok> = Vec::new();
        for tok in toks {
            if is_rel_tok(&tok) || tok == Tok::Ch('=') || is_approx(&tok) {
                ops.push(tok);
                parts.push(Vec::new());
            } else {
                parts.last_mut().unwrap().push(tok);
            }
        }
        let mut nodes = Vec::new();
        for p in parts {
            nodes.push(parse_part(p).map_err(|_| PErr::Unsupported)?);
        }
        if has_approx {
            // the reference folds left: `lhs \approx rhs` is rhs when lhs is a bare
            // symbol (an assignment), else lhs; a relation on the left is kept
            let mut cur: Vec<Node> = vec![nodes[0].clone()];
            let mut ineq = false;
            for (op, rhs) in ops.iter().zip(nodes.into_iter().skip(1)) {
                if !is_approx(op) {
                    ineq |= is_rel_tok(op);
                    cur.push(rhs);
                } else if ineq {
                    // whether a relation on the left counts as "only symbols"
                    // depends on its sides: not reproduced
                    return Err(PErr::Unsupported);
                } else if cur.len() == 1 {
                    match super::compare::only_symbols(&cur[0]) {
                        Some(true) => cur[0] = rhs,
                        Some(false) => {}
                        None => return Err(PErr::Unsupported),
                    }
                }
            }
            if ineq {
                // a relation with an inequality: never a number, kept as text
                return Ok(Value::Rel(t.split_whitespace().collect(), None));
            }
            return Ok(if cur.len() == 1 {
                Value::Expr(cur.pop().unwrap())
            } else {
                Value::Eq(cur)
            });
        }
        if has_ineq {
            let kinds: Option<Vec<RelOp>> = ops.iter().map(rel_op).collect();
            let parsed = kinds.map(|ops| Box::new(RelParts { ops, nodes }));
            return Ok(Value::Rel(t.split_whitespace().collect(), parsed));
        }
        // a \pm set on a right-hand side is read only after a lone symbol
        // (`x = 0 \pm 7`); after an expression (`-4 = 0 \pmod{7}`) the
        // reference's parser rejects the text
        if nodes[1..].iter().any(|n| matches!(n, Node::PlusMinus(..)))
            && !(nodes.len() == 2 && matches!(nodes[0], Node::Sym(_)))
        {
            return Err(PErr::Unsupported);
        }
        return Ok(Value::Eq(nodes));
    }
    parse_part(toks).map(Value::Expr)
}

/// `a \pm b` (one `\pm`, outside brackets, with a single term after it): the
/// reference's set {a - b, a + b}; `\pm b` alone is {-b, b}.
fn plus_minus(t: Vec<Tok>) -> R<Node> {
    let is_pm = |x: &Tok| matches!(x, Tok::Cmd(c) if c == "pm");
    if t.iter().filter(|x| is_pm(x)).count() != 1 {
        return Err(PErr::Unsupported);
    }
    let k = t.iter().position(is_pm).unwrap();
    let mut depth = 0i64;
    for (j, x) in t.iter().enumerate() {
        match x {
            Tok::Ch('(') | Tok::Ch('{') | Tok::Ch('[') => depth += 1,
            Tok::Ch(')') | Tok::Ch('}') | Tok::Ch(']') => depth -= 1,
            Tok::Ch('+') | Tok::Ch('-') if j > k && depth == 0 => {
                return Err(PErr::Unsupported);
            }
            _ if j == k && depth != 0 => return Err(PErr::Unsupported),
            _ => {}
        }
    }
    let left = t[..k].to_vec();
    let right = t[k + 1..].to_vec();
    let b = parse_expr_tokens(right)?;
    // b must be clearly nonzero: {a - 0, a + 0} is the one-element set {a}
    let nonzero = if !super::compare::is_constant(&b) {
        nonzero_monomial(&b)
    } else {
        super::compare::eval_const(&b).is_some_and(|v| v.abs() > 1e-9)
    };
    if !nonzero {
        return Err(PErr::Unsupported);
    }
    let a = if left.is_empty() {
        None
    } else {
        Some(parse_expr_tokens(left)?)
    };
    Ok(Node::PlusMinus(a.map(Box::new), Box::new(b)))
}

/// a product of symbols and nonzero numbers (never zero as a polynomial)
fn nonzero_monomial(n: &Node) -> bool {
    match n {
        Node::Sym(_) => true,
        Node::Num { v, .. } | Node::Frac(v) => v.n != 0,
        Node::Mul(v) => v.iter().all(nonzero_monomial),
        _ => false,
    }
}

/// An inequality or a chain of them: `nodes[0] ops[0] nodes[1] ops[1] ...`.
#[derive(Clone, Debug, PartialEq)]
pub struct RelParts {
    pub ops: Vec<RelOp>,
    pub nodes: Vec<Node>,
}

/// Kind of a single inequality `lhs OP rhs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelOp {
    Lt,
    Le,
    Gt,
    Ge,
    Ne,
}

impl RelOp {
    /// the relation read from the other side (a < b is b > a)
    pub fn flipped(self) -> RelOp {
        match self {
            RelOp::Lt => RelOp::Gt,
            RelOp::Le => RelOp::Ge,
            RelOp::Gt => RelOp::Lt,
            RelOp::Ge => RelOp::Le,
            RelOp::Ne => RelOp::Ne,
        }
    }
}

fn rel_op(t: &Tok) -> Option<RelOp> {
    Some(match t {
        Tok::Ch('<') => RelOp::Lt,
        Tok::Ch('>') => RelOp::Gt,
        Tok::Cmd(c) => match c.as_str() {
            "lt" => RelOp::Lt,
            "gt" => RelOp::Gt,
            "le" | "leq" | "leqslant" => RelOp::Le,
            "ge" | "geq" | "geqslant" => RelOp::Ge,
            "ne" | "neq" => RelOp::Ne,
            _ => return None,
        },
        _ => return None,
    })
}

/// One side of a relation: an expression, or `atom \mod atom` (sympy's Mod;
/// with atoms on both sides the reference's precedence of `\mod` cannot matter).
fn parse_part(t: Vec<Tok>) -> R<Node> {
    let is_pm = |x: &Tok| matches!(x, Tok::Cmd(c) if c == "pm");
    if t.iter().any(is_pm) {
        return plus_minus(t);
    }
    let is_mod = |x: &Tok| matches!(x, Tok::Cmd(c) if c == "mod");
    let n_mod = t.iter().filter(|x| is_mod(x)).count();
    if n_mod == 0 {
        return parse_expr_tokens(t);
    }
    if n_mod > 1 {
        return Err(PErr::Unsupported);
    }
    let k = t.iter().position(is_mod).unwrap();
    let atom = |toks: Vec<Tok>| -> R<Node> {
        if toks.is_empty() {
            return Err(PErr::Unsupported);
        }
        let mut p = P {
            t: toks,
            i: 0,
            depth: 0,
        };
        let e = p.postfix()?;
        if p.i != p.t.len() {
            return Err(PErr::Unsupported);
        }
        Ok(e)
    };
    let right = t[k + 1..].to_vec();
    let left = t[..k].to_vec();
    Ok(Node::Mod(Box::new(atom(left)?), Box::new(atom(right)?)))
}

fn is_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())
}

/// Parse a normalised answer string into a `Value`.
pub fn parse_answer(s: &str) -> R<Value> {
    let s = s.trim();
    if s.is_empty() {
        return Err(PErr::Invalid);
    }
    if s.len() > MAX_ANSWER_BYTES {
        return Err(PErr::Unsupported);
    }
    if s.contains("\\begin") || s.contains("\\end") || s.contains("\\\\") {
        return Err(PErr::Unsupported);
    }
    // x \in [a, b]: the reference reads it as the set (x a bare symbol)
    if has_cmd(s, "in") {
        if let Some((l, r)) = s.split_once("\\in") {
            let l = l.trim();
            if l.len() == 1 && l.as_bytes()[0].is_ascii_lowercase() && l != "e" && l != "i" {
                let v = parse_answer(r)?;
                if matches!(v, Value::Interval { .. } | Value::Set(_)) {
                    return Ok(v);
                }
            }
        }
        return Err(PErr::Unsupported);
    }
    // \{ a, b \}, and {a, b} with plain braces
    let braced = s
        .strip_prefix("\\{")
        .and_then(|r| r.strip_suffix("\\}"))
        .or_else(|| {
            let inner = s.strip_prefix('{')?.strip_suffix('}')?;
            let whole = split_top(inner, b',')?;
            (whole.len() > 1 && !inner.contains('{') && !inner.contains('}')).then_some(inner)
        });
    if let Some(inner) = braced {
        let parts = split_top(inner, b',').ok_or(PErr::Unsupported)?;
        if parts.iter().any(|p| p.trim().is_empty()) {
            return Err(PErr::Unsupported);
        }
        let mut items = Vec::new();
        for p in parts {
            items.push(relation(p.trim())?);
        }
        return Ok(Value::Set(items));
    }
    let parts = split_top(s, b',').ok_or(PErr::Unsupported)?;
    if parts.len() > 1 {
        // thousands separators: 1,234,567
        let first = parts[0].trim();
        if parts.iter().all(|p| is_digits(p))
            && first.len() <= 3
            && !first.starts_with('0')
            && parts[1..].iter().all(|p| p.len() == 3)
        {
            return relation(&parts.concat());
        }
        // 16,386.20: thousands separators with a decimal part
        let last = parts[parts.len() - 1];
        if let Some((int_last, frac)) = last.split_once('.') {
            if parts[..parts.len() - 1].iter().all(|p| is_digits(p))
                && first.len() <= 3
                && !first.starts_with('0')
                && parts[1..parts.len() - 1].iter().all(|p| p.len() == 3)
                && int_last.len() == 3
                && is_digits(int_last)
                && is_digits(frac)
            {
                return relation(&parts.concat());
            }
        }
        if parts.iter().any(|p| p.trim().is_empty()) {
            return Err(PErr::Unsupported);
        }
        if parts[1..].iter().any(|p| p.len() == 3 && is_digits(p))
            || parts
                .iter()
                .any(|p| p.trim() != *p && is_digits(p.trim()) && p.trim().len() == 3)
        {
            return Err(PErr::Unsupported);
        }
        let mut items = Vec::new();
        for p in parts {
            let p = p.trim();
            // (1, 2), (3, 4): a list of tuples
            if p.starts_with('(')
                && p.ends_with(')')
                && split_top(&p[1..p.len() - 1], b',').is_some_and(|v| v.len() > 1)
            {
                items.push(parse_answer(p)?);
            } else {
                items.push(relation(p)?);
            }
        }
        return Ok(Value::Set(items));
    }
    // (a, b) / [a, b] / (a, b, c)
    let b = s.as_bytes();
    let open = b[0];
    let close = b[b.len() - 1];
    if (open == b'(' || open == b'[') && (close == b')' || close == b']') && s.len() >= 2 {
        let inner = &s[1..s.len() - 1];
        if let Some(items) = split_top(inner, b',') {
            // the brackets must enclose the whole string
            let balanced = split_top(inner, b'\0').is_some() && {
                let mut d = 0i64;
                let mut ok = true;
                for c in inner.bytes() {
                    match c {
                        b'(' | b'[' | b'{' => d += 1,
                        b')' | b']' | b'}' => d -= 1,
                        _ => {}
                    }
                    if d < 0 {
                        ok = false;
                        break;
                    }
                }
                ok && d == 0
            };
            if balanced && items.len() >= 2 {
                if items.iter().any(|p| p.trim().is_empty()) {
                    return Err(PErr::Unsupported);
                }
                if items.len() == 2 {
                    let lo = parse_expr_tokens(tokenize(items[0])?)?;
                    let hi = parse_expr_tokens(tokenize(items[1])?)?;
                    return Ok(Value::Interval {
                        lo,
                        hi,
                        lo_open: open == b'(',
                        hi_open: close == b')',
                    });
                }
                if open == b'(' && close == b')' {
                    let mut v = Vec::new();
                    for p in items {
                        v.push(relation(p.trim())?);
                    }
                    return Ok(Value::Tuple(v));
                }
                return Err(PErr::Unsupported);
            }
        }
    }
    if let Some(v) = tuple_equation(s)? {
        return Ok(v);
    }
    relation(s)
}

/// `(x, y) = (1, -5)`: both sides tuples (or pairs) at the top level.
fn tuple_equation(s: &str) -> R<Option<Value>> {
    let Some(parts) = split_top(s, b'=') else {
        return Ok(None);
    };
    let b = s.as_bytes();
    let plain_eq = (0..b.len()).filter(|&i| b[i] == b'=').all(|i| {
        i > 0 && !matches!(b[i - 1], b'<' | b'>' | b'!' | b'\\') && b.get(i + 1) != Some(&b'=')
    });
    let (l, r) = match parts.as_slice() {
        [l, r] if plain_eq => (l.trim(), r.trim()),
        _ => return Ok(None),
    };
    if !l.starts_with('(') || !r.starts_with('(') || !l.ends_with(')') {
        return Ok(None);
    }
    let lhs = parse_answer(l)?;
    let rhs = parse_answer(r)?;
    let tuple_like = |v: &Value| {
        matches!(
            v,
            Value::Tuple(_)
                | Value::Interval {
                    lo_open: true,
                    hi_open: true,
                    ..
                }
        )
    };
    if !tuple_like(&lhs) || !tuple_like(&rhs) {
        return Err(PErr::Unsupported);
    }
    Ok(Some(Value::TupleEq(Box::new(lhs), Box::new(rhs))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Value {
        parse_answer(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn numbers_and_fractions() {
        assert_eq!(
            ok("12"),
            Value::Expr(Node::Num {
                v: Rat::int(12),
                float: false
            })
        );
        assert_eq!(
            ok("-3"),
            Value::Expr(Node::Num {
                v: Rat::int(-3),
                float: false
            })
        );
        assert_eq!(
            ok("\\frac{3}{6}"),
            Value::Expr(Node::Frac(Rat::new(1, 2).unwrap()))
        );
        assert_eq!(
            ok("2\\frac{1}{2}"),
            Value::Expr(Node::Frac(Rat::new(5, 2).unwrap()))
        );
        assert_eq!(
            ok("1,234"),
            Value::Expr(Node::Num {
                v: Rat::int(1234),
                float: false
            })
        );
        assert!(matches!(ok("1,23"), Value::Set(_)));
        assert!(matches!(
            ok("(1,2)"),
            Value::Interval {
                lo_open: true,
                hi_open: true,
                ..
            }
        ));
        assert!(matches!(ok("(1,2,3)"), Value::Tuple(_)));
        assert!(matches!(ok("\\{1,2\\}"), Value::Set(_)));
        assert!(matches!(ok("x = 5"), Value::Eq(_)));
        assert_eq!(ok("\\text{Evelyn}"), Value::Text("evelyn".into()));
        assert_eq!(parse_answer(""), Err(PErr::Invalid));
        // the reference reads "2(3)" as 2 + 3
        assert_eq!(ok("2(3)"), Value::Expr(Node::Frac(Rat::int(5))));
        assert_eq!(parse_answer("1 000"), Err(PErr::Unsupported));
        assert_eq!(
            parse_answer("\\begin{pmatrix}1\\end{pmatrix}"),
            Err(PErr::Unsupported)
        );
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let s = "{".repeat(10_000) + "1" + &"}".repeat(10_000);
        assert_eq!(parse_answer(&s), Err(PErr::Unsupported));
        let s = "(".repeat(100) + "1" + &")".repeat(100);
        assert_eq!(parse_answer(&s), Err(PErr::Unsupported));
    }
}
