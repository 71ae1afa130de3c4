//! Equivalence of two parsed answers, following the reference's rules
//! (math-verify 0.9.0 `verify(gold, pred)`, default float_rounding=6):
//!
//! - a decimal literal against an integer literal: equal only when exactly equal;
//! - a decimal literal against anything else: equal when both round to the same
//!   6 decimals;
//! - two integers (or integer percentages): equal values, the percent sign ignored;
//! - otherwise: mathematical equality (exact rationals, else numeric to ~1e-12,
//!   with a grey zone left undecided);
//! - expressions with variables: equal at several sample points;
//! - `x = 5` against `5`: the right-hand side; `x = 5` against `y = 5`: unequal;
//! - sets (any order), tuples (in order), intervals (ends and openness).
//!
//! Every function returns `Option<bool>`: `None` is "not sure" (undecided).

use std::cell::Cell;

use super::num::Rat;

thread_local! {
    /// Decimals used when a float literal is compared (the reference's
    /// float_rounding, 6 by default). Set per call by `with_options`.
    static FLOAT_ROUNDING: Cell<u32> = const { Cell::new(6) };
    /// The reference's `strict`: when false, variables are matched by position
    /// (not reproduced: comparisons with variables are left undecided).
    static STRICT: Cell<bool> = const { Cell::new(true) };
    /// The reference makes every symbol complex when the text has a standalone
    /// `i` (math-verify's `should_treat_as_complex`); identities proven at real
    /// sample points (|x|^2 = x^2) then do not hold, so symbolic equality is
    /// left undecided.
    static COMPLEX: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with the given comparison options (restored afterwards).
pub fn with_options<T>(
    float_rounding: u32,
    strict: bool,
    complex: bool,
    f: impl FnOnce() -> T,
) -> T {
    let old = (
        FLOAT_ROUNDING.with(|c| c.replace(float_rounding)),
        STRICT.with(|c| c.replace(strict)),
        COMPLEX.with(|c| c.replace(complex)),
    );
    let r = f();
    FLOAT_ROUNDING.with(|c| c.set(old.0));
    STRICT.with(|c| c.set(old.1));
    COMPLEX.with(|c| c.set(old.2));
    r
}

/// math-verify's `should_treat_as_complex` for the parts this parser reads: a
/// standalone `i` (`\bi\b`), `\text{i}` / `\mathrm{i}`, `\imath`.
pub fn looks_complex(s: &str) -> bool {
    let b = s.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    for (k, &c) in b.iter().enumerate() {
        if c == b'i' && (k == 0 || !word(b[k - 1])) && !b.get(k + 1).is_some_and(|&n| word(n)) {
            return true;
        }
    }
    s.contains("\\text{i}")
        || s.contains("\\mathrm{i}")
        || s.contains("\\imath")
        || s.contains("\\det")
}
use super::parse::{Fun, Node, Value};

/// Value of an expression: exact when it is a rational, else a float.
#[derive(Clone, Copy, Debug)]
pub struct Ev {
    pub exact: Option<Rat>,
    pub f: f64,
}

impl Ev {
    fn rat(r: Rat) -> Ev {
        Ev {
            exact: Some(r),
            f: r.to_f64(),
        }
    }
    fn float(f: f64) -> Ev {
        Ev { exact: None, f }
    }
}

fn factorial(n: i128) -> Option<Rat> {
    if !(0..=30).contains(&n) {
        return None;
    }
    let mut r: i128 = 1;
    for k in 2..=n {
        r = r.checked_mul(k)?;
    }
    Some(Rat::int(r))
}

/// Evaluate `n` with symbols bound by `env` (None: a symbol without binding,
/// infinity, division by zero or a non-real value).
pub fn eval(n: &Node, env: &dyn Fn(&str) -> Option<f64>) -> Option<Ev> {
    let r = match n {
        Node::Num { v, .. } => Ev::rat(*v),
        Node::Frac(v) => Ev::rat(*v),
        Node::Sym(s) => Ev::float(env(s)?),
        Node::Pi => Ev::float(std::f64::consts::PI),
        Node::E => Ev::float(std::f64::consts::E),
        Node::Inf | Node::PlusMinus(..) => return None,
        Node::Add(ts) => {
            let mut acc = Ev::rat(Rat::int(0));
            for t in ts {
                let v = eval(t, env)?;
                acc = Ev {
                    exact: match (acc.exact, v.exact) {
                        (Some(a), Some(b)) => a.plus(b),
                        _ => None,
                    },
                    f: acc.f + v.f,
                };
            }
            acc
        }
        Node::Mul(ts) => {
            let mut acc = Ev::rat(Rat::int(1));
            for t in ts {
                let v = eval(t, env)?;
                acc = Ev {
                    exact: match (acc.exact, v.exact) {
                        (Some(a), Some(b)) => a.times(b),
                        _ => None,
                    },
                    f: acc.f * v.f,
                };
            }
            acc
        }
        Node::Neg(a) => {
            let v = eval(a, env)?;
            Ev {
                exact: v.exact.and_then(|r| r.negate()),
                f: -v.f,
            }
        }
        Node::Div(a, b) => {
            let x = eval(a, env)?;
            let y = eval(b, env)?;
            if y.f == 0.0 || y.exact.is_some_and(|r| r.n == 0) {
                return None;
            }
            Ev {
                exact: match (x.exact, y.exact) {
                    (Some(a), Some(b)) => a.over(b),
                    _ => None,
                },
                f: x.f / y.f,
            }
        }
        Node::Pow(a, b) => {
            let x = eval(a, env)?;
            let y = eval(b, env)?;
            let exact = match (x.exact, y.exact) {
                (Some(a), Some(b)) if b.is_int() && !(a.n == 0 && b.n < 0) => a.pow(b.n),
                _ => None,
            };
            let f = x.f.powf(y.f);
            if f.is_nan() && exact.is_none() {
                return None;
            }
            Ev {
                exact,
                f: exact.map(|r| r.to_f64()).unwrap_or(f),
            }
        }
        Node::Root(a, k) => {
            let x = eval(a, env)?;
            let kk = eval(k, env)?;
            let kr = kk.exact?;
            if !kr.is_int() || kr.n < 2 {
                return None;
            }
            if x.f < 0.0 {
                return None;
            }
            let exact = if kr.n == 2 {
                x.exact.and_then(|r| r.sqrt())
            } else {
                None
            };
            let f = x.f.powf(1.0 / kr.n as f64);
            Ev {
                exact,
                f: exact.map(|r| r.to_f64()).unwrap_or(f),
            }
        }
        Node::Fact(a) => {
            let x = eval(a, env)?;
            let r = x.exact?;
            if !r.is_int() || r.n < 0 {
                return None;
            }
            match factorial(r.n) {
                Some(v) => Ev::rat(v),
                // beyond i128: a float (infinite past 170!), never an exact value
                None => Ev::float((2..=r.n.min(400)).fold(1.0f64, |acc, k| acc * k as f64)),
            }
        }
        Node::Func(f, a) => {
            let x = eval(a, env)?;
            if matches!(f, Fun::Floor | Fun::Ceil) {
                if let Some(r) = x.exact {
                    let q = r.n.div_euclid(r.d);
                    let up = if r.n.rem_euclid(r.d) != 0 { 1 } else { 0 };
                    return Some(Ev::rat(Rat::int(if matches!(f, Fun::Floor) {
                        q
                    } else {
                        q + up
                    })));
                }
                // of an irrational or a variable: not reproduced (piecewise constant;
                // sample points cannot tell)
                return None;
            }
            if matches!(f, Fun::Abs) {
                return Some(Ev {
                    exact: x
                        .exact
                        .and_then(|r| if r.n < 0 { r.negate() } else { Some(r) }),
                    f: x.f.abs(),
                });
            }
            let v = match f {
                Fun::Floor | Fun::Ceil | Fun::Abs => unreachable!(),
                Fun::Sin => x.f.sin(),
                Fun::Cos => x.f.cos(),
                Fun::Tan => x.f.tan(),
                Fun::Sec => 1.0 / x.f.cos(),
                Fun::Csc => 1.0 / x.f.sin(),
                Fun::Cot => 1.0 / x.f.tan(),
                Fun::Ln => {
                    if x.f <= 0.0 {
                        return None;
                    }
                    x.f.ln()
                }
                Fun::Log10 => {
                    if x.f <= 0.0 {
                        return None;
                    }
                    x.f.log10()
                }
            };
            Ev::float(v)
        }
        Node::Opaque(name, args) => {
            // an arbitrary but fixed function of its arguments
            let mut h = name
                .bytes()
                .fold(0.0f64, |h, b| (h * 31.0 + b as f64) % 1000.0);
            for a in args {
                h += 1.37 * eval(a, env)?.f;
            }
            Ev::float(2.0 + h.sin())
        }
        Node::Log(a, b) => {
            let x = eval(a, env)?;
            let y = eval(b, env)?;
            if x.f <= 0.0 || y.f <= 0.0 || y.f == 1.0 {
                return None;
            }
            Ev::float(x.f.ln() / y.f.ln())
        }
        Node::Mod(a, b) => {
            // integers only: sympy's Mod of non-integers and symbols is not reproduced
            let x = eval(a, env)?.exact?;
            let y = eval(b, env)?.exact?;
            if !x.is_int() || !y.is_int() || y.n == 0 {
                return None;
            }
            // Python's sign convention: the result takes the divisor's sign
            let r = x.n.rem_euclid(y.n.abs());
            Ev::rat(Rat::int(if y.n < 0 && r != 0 { r + y.n } else { r }))
        }
        Node::Pct(a) => {
            let v = eval(a, env)?;
            let h = Rat::int(100);
            Ev {
                exact: v.exact.and_then(|r| r.over(h)),
                f: v.f / 100.0,
            }
        }
    };
    if r.f.is_nan() {
        return None;
    }
    Some(r)
}

fn no_env(_: &str) -> Option<f64> {
    None
}

/// The value of a constant expression, if it has one.
pub fn eval_const(n: &Node) -> Option<f64> {
    eval(n, &no_env).map(|e| e.f)
}

/// `a \pm b` as the set it stands for.
fn plus_minus_set(a: &Option<Box<Node>>, b: &Node) -> Value {
    let neg = Node::Neg(Box::new(b.clone()));
    let (lo, hi) = match a {
        Some(a) => (
            Node::Add(vec![(**a).clone(), neg]),
            Node::Add(vec![(**a).clone(), b.clone()]),
        ),
        None => (neg, b.clone()),
    };
    Value::Set(vec![Value::Expr(lo), Value::Expr(hi)])
}

fn expand_plus_minus(v: &Value) -> Option<Value> {
    match v {
        Value::Expr(Node::PlusMinus(a, b)) => Some(plus_minus_set(a, b)),
        _ => None,
    }
}

pub(super) fn collect_syms(n: &Node, out: &mut Vec<String>) {
    match n {
        Node::Sym(s) if !out.contains(s) => out.push(s.clone()),
        Node::Add(v) | Node::Mul(v) => v.iter().for_each(|x| collect_syms(x, out)),
        Node::Neg(a) | Node::Fact(a) | Node::Func(_, a) | Node::Pct(a) => collect_syms(a, out),
        Node::Div(a, b)
        | Node::Pow(a, b)
        | Node::Root(a, b)
        | Node::Log(a, b)
        | Node::Mod(a, b) => {
            collect_syms(a, out);
            collect_syms(b, out);
        }
        Node::Opaque(_, v) => v.iter().for_each(|x| collect_syms(x, out)),
        _ => {}
    }
}

/// Whether `f` holds for `n` or any node below it.
pub(super) fn any_node(n: &Node, f: &dyn Fn(&Node) -> bool) -> bool {
    f(n) || match n {
        Node::Add(v) | Node::Mul(v) | Node::Opaque(_, v) => v.iter().any(|x| any_node(x, f)),
        Node::Neg(a) | Node::Fact(a) | Node::Func(_, a) | Node::Pct(a) => any_node(a, f),
        Node::Div(a, b)
        | Node::Pow(a, b)
        | Node::Root(a, b)
        | Node::Log(a, b)
        | Node::Mod(a, b) => any_node(a, f) || any_node(b, f),
        _ => false,
    }
}

fn has_inf(n: &Node) -> bool {
    any_node(n, &|x| matches!(x, Node::Inf))
}

/// A logarithm to a base (`\log_b`, `\log`) of a Float: sympy makes it
/// Float / log(b), which its simplify neither folds nor cancels exactly
/// (`\log 0.001` is not `-3` there).
fn has_float_log(n: &Node) -> bool {
    let float = |x: &Node| matches!(x, Node::Num { float: true, .. });
    any_node(n, &|x| match x {
        Node::Log(a, b) => any_node(a, &float) || any_node(b, &float),
        Node::Func(Fun::Log10, a) => any_node(a, &float),
        _ => false,
    })
}

/// The reference's "atomic number" classes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Atom {
    Int(Rat),
    Rational(Rat),
    Float(Rat),
    PctInt(Rat),
    PctFloat(Rat),
    PctRational(Rat),
    Composite,
}

fn atom(n: &Node) -> Atom {
    match n {
        Node::Num { v, float: false } => Atom::Int(*v),
        Node::Num { v, float: true } => Atom::Float(*v),
        Node::Frac(v) => {
            if v.is_int() {
                Atom::Int(*v)
            } else {
                Atom::Rational(*v)
            }
        }
        Node::Pct(a) => match atom(a) {
            Atom::Int(v) => Atom::PctInt(v),
            Atom::Float(v) => Atom::PctFloat(v),
            Atom::Rational(v) => Atom::PctRational(v),
            _ => Atom::Composite,
        },
        _ => Atom::Composite,
    }
}

/// Relative closeness of two floats: Some(true) clearly equal, Some(false) clearly not.
///
/// Purely relative: an absolute tolerance would call `e^{-30}` equal to `0` or to
/// `e^{-31}`, which math-verify (exact sympy arithmetic) does not. Values near the
/// bottom of f64's range, and a tiny value against an exact zero (float error, or
/// a true difference?), are left undecided for the fallback.
fn float_eq(a: f64, b: f64) -> Option<bool> {
    if a == b {
        return Some(true);
    }
    let scale = a.abs().max(b.abs());
    if scale < 1e-290 {
        return None;
    }
    if a == 0.0 || b == 0.0 {
        return if scale > 1e-9 { Some(false) } else { None };
    }
    let d = (a - b).abs();
    if d <= 1e-11 * scale {
        Some(true)
    } else if d > 1e-7 * scale {
        Some(false)
    } else {
        None
    }
}

/// Mathematical equality of two constant expressions.
fn math_eq(a: &Ev, b: &Ev) -> Option<bool> {
    if let (Some(x), Some(y)) = (a.exact, b.exact) {
        return Some(x == y);
    }
    // beyond f64 (2^2004): unequal to any finite value, unknown otherwise
    match (a.f.is_infinite(), b.f.is_infinite()) {
        (true, true) => return None,
        (true, false) | (false, true) => return Some(false),
        _ => {}
    }
    // an inexact 0.0 may be an underflow (10^{-400}, e^{-1000}) or a float error
    // (sin(pi)): only math-verify can tell
    if (a.f == 0.0 && a.exact.is_none()) || (b.f == 0.0 && b.exact.is_none()) {
        return None;
    }
    // an irrational value can never equal a rational exactly, but floats cannot
    // tell them apart reliably: use the numeric comparison with a grey zone
    float_eq(a.f, b.f)
}

/// round(x, k) == round(y, k) (k = float_rounding, 6 by default), undecided
/// when either value sits on a rounding boundary.
fn round6_eq(a: &Ev, b: &Ev) -> Option<bool> {
    let k = FLOAT_ROUNDING.with(|c| c.get()).min(12);
    let r = |e: &Ev| -> Option<i128> {
        if let Some(x) = e.exact {
            return x.round_decimals(k);
        }
        let s = e.f * 10f64.powi(k as i32);
        if !s.is_finite() || s.abs() > 1e15 {
            return None;
        }
        let fr = s - s.floor();
        if (fr - 0.5).abs() < 1e-6 {
            return None;
        }
        Some(s.round() as i128)
    };
    Some(r(a)? == r(b)?)
}

/// The reference's symbolic fallback when a Float literal takes part:
/// simplify(a - b) in 15-digit Float arithmetic, zero only when the two agree
/// to about 15 digits; a relative difference over 1e-11 is never zero there
/// (27*pi against 84.8230).
fn float_symbolic_eq(a: &Ev, b: &Ev) -> Option<bool> {
    match math_eq(a, b) {
        Some(v) => Some(v),
        None => {
            let (x, y) = (a.f, b.f);
            if x.is_finite() && y.is_finite() && (x - y).abs() > 1e-11 * x.abs().max(y.abs()) {
                Some(false)
            } else {
                None
            }
        }
    }
}

/// Two constant expressions (no symbols). Beyond f64 and i128
/// (2^{2019} - 2^{2018}), exact values modulo a prime can still tell them apart.
fn const_eq(g: &Node, p: &Node) -> Option<bool> {
    const_eq_floats(g, p).or_else(|| super::ratfun::constants_differ(g, p).then_some(false))
}

fn const_eq_floats(g: &Node, p: &Node) -> Option<bool> {
    if has_inf(g) || has_inf(p) {
        return match (g, p) {
            (Node::Inf, Node::Inf) => Some(true),
            (Node::Neg(a), Node::Neg(b)) if **a == Node::Inf && **b == Node::Inf => Some(true),
            (Node::Inf, Node::Neg(_)) | (Node::Neg(_), Node::Inf) => Some(false),
            // plus or minus infinity against a finite number
            _ if has_inf(g) != has_inf(p) => {
                let (inf_side, other) = if has_inf(g) { (g, p) } else { (p, g) };
                let signed_inf = matches!(inf_side, Node::Inf)
                    || matches!(inf_side, Node::Neg(x) if **x == Node::Inf);
                if signed_inf && eval(other, &no_env).is_some_and(|e| e.f.is_finite()) {
                    Some(false)
                } else {
                    None
                }
            }
            _ => None,
        };
    }
    if has_float_log(g) || has_float_log(p) {
        return None;
    }
    let ag = atom(g);
    let ap = atom(p);
    let eg = eval(g, &no_env)?;
    let ep = eval(p, &no_env)?;
    let is_float = |a: Atom| matches!(a, Atom::Float(_) | Atom::PctFloat(_));
    let is_num = |a: Atom| !matches!(a, Atom::Composite);
    if is_num(ag) || is_num(ap) {
        if is_float(ag) || is_float(ap) {
            // Integer vs Float: sympy's Integer == Float is False after rounding,
            // only the symbolic fallback (exact difference 0) can succeed
            if matches!(ag, Atom::Int(_)) || matches!(ap, Atom::Int(_)) {
                return float_symbolic_eq(&eg, &ep);
            }
            if round6_eq(&eg, &ep)? {
                return Some(true);
            }
            return float_symbolic_eq(&eg, &ep);
        }
        let int_like = |a: Atom| matches!(a, Atom::Int(_) | Atom::PctInt(_));
        if int_like(ag) && int_like(ap) {
            let raw = |a: Atom| match a {
                Atom::Int(v) | Atom::PctInt(v) => v,
                _ => unreachable!(),
            };
            return Some(raw(ag) == raw(ap));
        }
        return math_eq(&eg, &ep);
    }
    // neither atomic: numeric equality; a Float inside a composite expression
    // keeps the comparison numeric as well
    math_eq(&eg, &ep)
}

fn has_opaque(n: &Node) -> bool {
    any_node(n, &|x| matches!(x, Node::Opaque(..)))
}

/// No symbols and no undefined functions in `n`.
pub fn is_constant(n: &Node) -> bool {
    let mut s = Vec::new();
    collect_syms(n, &mut s);
    s.is_empty() && !has_opaque(n)
}

/// Sample points for variables (fixed, so verdicts are deterministic).
/// Positive, so that roots and logarithms of variables stay real.
const POINTS: [[f64; 3]; 6] = [
    [0.5377, 1.8339, 2.2588],
    [0.8622, 0.3188, 1.3077],
    [1.4336, 0.3426, 3.5784],
    [7.2540, 5.1031, 11.711],
    [13.077, 9.4336, 6.3426],
    [21.031, 17.254, 8.6622],
];

/// Values of `n` at the sample points (None where undefined).
fn samples(n: &Node, syms: &[String]) -> Vec<Option<f64>> {
    POINTS
        .iter()
        .map(|pt| {
            let env = |s: &str| -> Option<f64> {
                let k = syms.iter().position(|x| x == s)?;
                Some(pt[k % 3] + (k / 3) as f64 * 0.731)
            };
            eval(n, &env).map(|e| e.f)
        })
        .collect()
}

/// A constant against an expression with variables or undefined functions.
fn const_vs_symbolic(c: &Node, x: &Node) -> Option<bool> {
    if has_inf(c) || has_inf(x) {
        return None;
    }
    // a bare symbol: the reference compares names (E the symbol vs e the number)
    if let Node::Sym(name) = x {
        return Some(name == "e" && *c == Node::E);
    }
    if has_opaque(x) {
        return Some(false);
    }
    let mut syms = Vec::new();
    collect_syms(x, &mut syms);
    // values where defined (x^2 - 9 under a root is not, for small x)
    let vals: Vec<f64> = samples(x, &syms).into_iter().flatten().collect();
    // clearly different values (an identically constant expression sampled in
    // floats differs only by cancellation noise, relative to its terms)
    if let Some(&first) = vals.first() {
        let differs = |v: f64| (v - first).abs() > 1e-6 * v.abs().max(first.abs()).max(1.0);
        if vals.iter().any(|v| differs(*v)) {
            return Some(false); // not constant: it cannot equal a number
        }
    }
    // a rational function that may be constant: sympy's simplify of the
    // difference is zero exactly when it is identically zero
    super::ratfun::identically_equal(c, x)
}

/// Expressions that may contain symbols: compare at sample points.
fn expr_eq(g: &Node, p: &Node) -> Option<bool> {
    let gc = is_constant(g);
    let pc = is_constant(p);
    let strict = STRICT.with(|c| c.get());
    let both_constant = gc && pc;
    if !(strict || both_constant) {
        return None;
    }
    if gc && pc {
        return const_eq(g, p);
    }
    if gc {
        return const_vs_symbolic(g, p);
    }
    if pc {
        return const_vs_symbolic(p, g);
    }
    if has_opaque(g) || has_opaque(p) {
        return None;
    }
    let mut syms = Vec::new();
    collect_syms(g, &mut syms);
    collect_syms(p, &mut syms);
    // a bare symbol on either side follows the reference's symbol rules
    match (g, p) {
        (Node::Sym(a), Node::Sym(b)) => return Some(a == b),
        (Node::Sym(_), _) | (_, Node::Sym(_)) => return None,
        _ => {}
    }
    let mut gs = Vec::new();
    collect_syms(g, &mut gs);
    let mut ps = Vec::new();
    collect_syms(p, &mut ps);
    gs.sort();
    ps.sort();
    // every variable takes both signs across the points (sqrt(x^2) is |x|, not x,
    // for the reference's real symbols); an undefined value leaves it undecided
    let points: [[f64; 3]; 4] = [
        [0.5377, 1.8339, 2.2588],
        [0.8622, 0.3188, 1.3077],
        [1.4336, 0.3426, 3.5784],
        [0.7254, 2.1031, 1.1711],
    ];
    let mut all_eq = true;
    for (j, pt) in points.iter().enumerate() {
        let env = |s: &str| -> Option<f64> {
            let k = syms.iter().position(|x| x == s)?;
            let v = pt[k % 3] + (k / 3) as f64 * 0.731;
            Some(if (j + k) % 2 == 1 { -v } else { v })
        };
        let a = eval(g, &env)?;
        let b = eval(p, &env)?;
        match float_eq(a.f, b.f) {
            Some(true) => {}
            Some(false) => all_eq = false,
            None => return None,
        }
    }
    if all_eq {
        // same function of the same variables
        if gs != ps || COMPLEX.with(|c| c.get()) {
            return None;
        }
        Some(true)
    } else {
        Some(false)
    }
}

fn is_assignment(v: &Value) -> bool {
    matches!(v, Value::Eq(nodes) if only_symbols(&nodes[0]) == Some(true))
}

/// latex2sympy's `is_expr_of_only_symbols` (is `lhs = ...` an assignment?):
/// Some(true) for symbols combined without numbers (x, AB, |AB|, f(x), N/B),
/// Some(false) when a number other than 0 or 1 (which sympy may fold away)
/// or a sign takes part, None when unsure.
pub fn only_symbols(n: &Node) -> Option<bool> {
    fn walk(n: &Node, names: &mut Vec<String>) -> Option<bool> {
        Some(match n {
            Node::Sym(s) => {
                if names.contains(s) {
                    // x x is folded to x^2 by sympy
                    return None;
                }
                names.push(s.clone());
                true
            }
            Node::Opaque(_, args) => {
                let mut all = true;
                for a in args {
                    all &= walk(a, names)?;
                }
                all
            }
            Node::Func(Fun::Abs, a) => walk(a, names)?,
            Node::Add(v) | Node::Mul(v) => {
                let mut all = true;
                for a in v {
                    all &= walk(a, names)?;
                }
                all
            }
            Node::Div(a, b) => walk(a, names)? && walk(b, names)?,
            Node::Num { v, .. } | Node::Frac(v) => {
                if v.n == 0 || v == &Rat::int(1) {
                    return None;
                }
                false
            }
            Node::Neg(a) | Node::Pow(a, _) | Node::Root(a, _) => {
                walk(a, names)?;
                false
            }
            // sympy's pi, E and oo are atoms without arguments, no Symbols
            Node::Pi | Node::E | Node::Inf => false,
            _ => return None,
        })
    }
    walk(n, &mut Vec::new())
}

/// `lo < x < hi` (or with <=), or `x < c` / `c < x` and the like, as the
/// interval the reference's `as_set` gives; None when not of that form.
fn relation_interval(r: &super::parse::RelParts) -> Option<Value> {
    use super::parse::RelOp;
    let is_var = |n: &Node| matches!(n, Node::Sym(_) | Node::Opaque(..)) && !is_constant(n);
    let lower = |op: RelOp| matches!(op, RelOp::Lt | RelOp::Le);
    let neg_inf = || Node::Neg(Box::new(Node::Inf));
    let (lo, hi, lo_open, hi_open) = match (r.ops.as_slice(), r.nodes.as_slice()) {
        ([a, b], [l, x, h]) if lower(*a) && lower(*b) && is_var(x) => {
            (l.clone(), h.clone(), *a == RelOp::Lt, *b == RelOp::Lt)
        }
        ([op], [x, c]) if is_var(x) && is_constant(c) => match op {
            RelOp::Lt | RelOp::Le => (neg_inf(), c.clone(), true, *op == RelOp::Lt),
            RelOp::Gt | RelOp::Ge => (c.clone(), Node::Inf, *op == RelOp::Gt, true),
            RelOp::Ne => return None,
        },
        ([op], [c, x]) if is_var(x) && is_constant(c) => match op {
            RelOp::Gt | RelOp::Ge => (neg_inf(), c.clone(), true, *op == RelOp::Gt),
            RelOp::Lt | RelOp::Le => (c.clone(), Node::Inf, *op == RelOp::Lt, true),
            RelOp::Ne => return None,
        },
        _ => return None,
    };
    // finite ends must be constants in increasing order (else the set is empty
    // or not an interval)
    for e in [&lo, &hi] {
        if !has_inf(e) && !is_constant(e) {
            return None;
        }
    }
    if !has_inf(&lo) && !has_inf(&hi) {
        let (a, b) = (eval(&lo, &no_env)?.f, eval(&hi, &no_env)?.f);
        if float_eq(a, b) != Some(false) || a > b {
            return None;
        }
    }
    Some(Value::Interval {
        lo,
        hi,
        lo_open,
        hi_open,
    })
}

fn last_rhs(v: &Value) -> Option<Node> {
    match v {
        Value::Eq(nodes) => nodes.last().cloned(),
        _ => None,
    }
}

fn elem_eq(g: &Value, p: &Value) -> Option<bool> {
    equal(g, p)
}

fn set_eq(g: &[Value], p: &[Value]) -> Option<bool> {
    // dedupe exact duplicates as a FiniteSet does
    let dedup = |v: &[Value]| -> Vec<Value> {
        let mut out: Vec<Value> = Vec::new();
        for x in v {
            if !out.contains(x) {
                out.push(x.clone());
            }
        }
        out
    };
    let g = dedup(g);
    let p = dedup(p);
    if g.len() != p.len() {
        // sizes could still agree after numeric de-duplication (1/2 and 0.5): unsure
        return if g
            .iter()
            .chain(p.iter())
            .all(|x| matches!(x, Value::Expr(Node::Num { float: false, .. })))
        {
            Some(false)
        } else {
            None
        };
    }
    // every gold element must match a distinct pred element
    let mut used = vec![false; p.len()];
    for ge in &g {
        let mut found = false;
        for (j, pe) in p.iter().enumerate() {
            if used[j] {
                continue;
            }
            match elem_eq(ge, pe) {
                Some(true) => {
                    used[j] = true;
                    found = true;
                    break;
                }
                Some(false) => {}
                None => return None,
            }
        }
        if !found {
            return Some(false);
        }
    }
    Some(true)
}

fn tuple_eq(g: &[Value], p: &[Value]) -> Option<bool> {
    if g.len() != p.len() {
        return Some(false);
    }
    let mut all = true;
    for (a, b) in g.iter().zip(p) {
        match elem_eq(a, b)? {
            true => {}
            false => all = false,
        }
    }
    Some(all)
}

fn node_of(v: &Value) -> Option<&Node> {
    match v {
        Value::Expr(n) => Some(n),
        _ => None,
    }
}

/// Is `gold` equivalent to `pred`?
pub fn equal(gold: &Value, pred: &Value) -> Option<bool> {
    if gold == pred {
        return Some(true);
    }
    if let Some(v) = tuple_equation_eq(gold, pred) {
        return v;
    }
    if let Some(g) = expand_plus_minus(gold) {
        return equal(&g, pred);
    }
    if let Some(p) = expand_plus_minus(pred) {
        return equal(gold, &p);
    }
    // an equation whose right-hand side is a \pm set, against a gold that is no
    // equation: that set (the reference takes the last right-hand side)
    if let (Value::Eq(nodes), false) = (pred, matches!(gold, Value::Eq(_))) {
        if let Some(Node::PlusMinus(a, b)) = nodes.last() {
            return equal(gold, &plus_minus_set(a, b));
        }
    }
    let g_assign = is_assignment(gold);
    let p_eq = matches!(pred, Value::Eq(_));
    let g_eq = matches!(gold, Value::Eq(_));
    // follow the gold's format: an equation prediction against a plain gold
    // is reduced to its last right-hand side, an assignment gold against a
    // plain prediction likewise
    if p_eq && !g_eq {
        let rhs = last_rhs(pred)?;
        return equal(gold, &Value::Expr(rhs));
    }
    if g_assign && !p_eq {
        let rhs = last_rhs(gold)?;
        return equal(&Value::Expr(rhs), pred);
    }
    match (gold, pred) {
        (Value::Eq(g), Value::Eq(p)) => {
            // both assignments x = ... : same variable and same value (a chain
            // x = a = b is truncated to x = b)
            match (&g[0], &p[0]) {
                (Node::Sym(a), Node::Sym(b)) => {
                    if a != b {
                        // x = 5 against y = 5: different variables
                        return Some(false);
                    }
                    expr_eq(g.last()?, p.last()?)
                }
                _ => None,
            }
        }
        (Value::Eq(g), Value::Expr(_)) if only_symbols(&g[0]) == Some(false) => {
            // an equation that is no assignment (2x + z = 1) against a plain
            // expression: sympy cannot subtract them, never equal
            Some(false)
        }
        (Value::Rel(_, Some(g)), Value::Rel(_, Some(p)))
            if g.ops.len() == 1 && p.ops.len() == 1 =>
        {
            // the reference's relational comparison: the same relation with
            // equal lhs - rhs, or the flipped one with lhs - rhs negated; anything
            // else goes on to sympy's solve(), which is not reproduced
            let (gop, gl, gr) = (&g.ops[0], &g.nodes[0], &g.nodes[1]);
            let (pop, pl, pr) = (&p.ops[0], &p.nodes[0], &p.nodes[1]);
            let diff =
                |a: &Node, b: &Node| Node::Add(vec![a.clone(), Node::Neg(Box::new(b.clone()))]);
            if gop == pop && expr_eq(&diff(gl, gr), &diff(pl, pr)) == Some(true) {
                return Some(true);
            }
            if gop.flipped() == *pop && expr_eq(&diff(gl, gr), &diff(pr, pl)) == Some(true) {
                return Some(true);
            }
            // linear in one and the same variable: sympy's solve() gives each
            // side's solution set, and different ones never compare equal
            match (linear_solution(*gop, gl, gr), linear_solution(*pop, pl, pr)) {
                (Some(a), Some(b)) if a.0 == b.0 && a != b => Some(false),
                _ => None,
            }
        }
        // a gold relation in one variable against a predicted interval: the
        // reference compares the relation's solution set (`as_set`)
        (Value::Rel(_, Some(g)), Value::Interval { .. }) => match relation_interval(g) {
            Some(iv) => equal(&iv, pred),
            None => None,
        },
        (Value::Interval { .. } | Value::Set(_), Value::Rel(..)) => {
            // a set against a relation is not compared by default
            // (allow_set_relation_comp=False): different kinds
            Some(false)
        }
        (Value::Rel(..), Value::Expr(n)) | (Value::Expr(n), Value::Rel(..)) => {
            // an inequality never equals a number
            if is_constant(n) {
                Some(false)
            } else {
                None
            }
        }
        (Value::Rel(..), _) | (_, Value::Rel(..)) => None,
        (Value::TupleEq(..), _) | (_, Value::TupleEq(..)) => None,
        (Value::Eq(_), _) | (_, Value::Eq(_)) => None,
        (Value::Text(a), Value::Text(b)) => Some(a == b),
        (Value::Text(w), Value::Expr(n)) | (Value::Expr(n), Value::Text(w)) => text_vs_expr(w, n),
        // a word against a set, tuple or interval: a singleton set holds it, else
        // different kinds
        (Value::Text(_), Value::Set(s)) | (Value::Set(s), Value::Text(_)) if s.len() == 1 => {
            if matches!(gold, Value::Set(_)) {
                equal(&s[0], pred)
            } else {
                equal(gold, &s[0])
            }
        }
        (Value::Text(_), Value::Set(_) | Value::Tuple(_) | Value::Interval { .. })
        | (Value::Set(_) | Value::Tuple(_) | Value::Interval { .. }, Value::Text(_)) => Some(false),
        (Value::Expr(g), Value::Expr(p)) => expr_eq(g, p),
        (Value::Set(g), Value::Set(p)) => set_eq(g, p),
        (Value::Tuple(g), Value::Tuple(p)) => tuple_eq(g, p),
        (Value::Set(_), Value::Tuple(_)) | (Value::Tuple(_), Value::Set(_)) => None,
        (
            Value::Interval {
                lo: a,
                hi: b,
                lo_open: ao,
                hi_open: bo,
            },
            Value::Interval {
                lo: c,
                hi: d,
                lo_open: co,
                hi_open: dopen,
            },
        ) => {
            if ao != co || bo != dopen {
                return Some(false);
            }
            let x = interval_end_eq(a, c)?;
            let y = interval_end_eq(b, d)?;
            Some(x && y)
        }
        (
            Value::Interval {
                lo,
                hi,
                lo_open: true,
                hi_open: true,
            },
            Value::Set(p) | Value::Tuple(p),
        )
        | (
            Value::Set(p) | Value::Tuple(p),
            Value::Interval {
                lo,
                hi,
                lo_open: true,
                hi_open: true,
            },
        ) => {
            if p.len() != 2 {
                return Some(false);
            }
            let mut a = node_of(&p[0])?;
            let mut b = node_of(&p[1])?;
            // a gold set is compared in sorted order (a finite set keeps its
            // elements sorted); a predicted set or a tuple in written order
            if matches!(gold, Value::Set(_)) {
                let va = eval(a, &no_env)?.f;
                let vb = eval(b, &no_env)?.f;
                if float_eq(va, vb) != Some(false) {
                    return None;
                }
                if va > vb {
                    std::mem::swap(&mut a, &mut b);
                }
            }
            let (mut lo, mut hi) = (lo, hi);
            if matches!(gold, Value::Set(_)) {
                // the interval's ends are sorted too when compared with a set
                let vl = eval(lo, &no_env)?.f;
                let vh = eval(hi, &no_env)?.f;
                if float_eq(vl, vh) != Some(false) {
                    return None;
                }
                if vl > vh {
                    std::mem::swap(&mut lo, &mut hi);
                }
            }
            let x = expr_eq(lo, a)?;
            let y = expr_eq(hi, b)?;
            Some(x && y)
        }
        (Value::Interval { .. }, _) | (_, Value::Interval { .. }) => {
            // interval vs a number or a closed interval vs a pair: different kinds
            if matches!(gold, Value::Expr(_)) || matches!(pred, Value::Expr(_)) {
                Some(false)
            } else {
                None
            }
        }
        (Value::Set(s), Value::Expr(_)) => {
            // a number is compared as the singleton set {number}
            if s.len() == 1 {
                equal(&s[0], pred)
            } else {
                Some(false)
            }
        }
        (Value::Expr(_), Value::Set(s)) => {
            if s.len() == 1 {
                equal(gold, &s[0])
            } else {
                Some(false)
            }
        }
        (Value::Tuple(_), Value::Expr(_)) | (Value::Expr(_), Value::Tuple(_)) => Some(false),
    }
}

/// A tuple equation on either side (`Some(verdict)`), following the gold's
/// format as the reference does: a predicted `(a, b) = (1, 2)` against a gold
/// that is no equation is its right-hand side; a gold assignment `(p, q) = (3, 2)`
/// (symbols on the left) against a prediction that is no equation likewise.
/// Only the forms whose sympy types match this parser's are decided: against a
/// plain expression, or tuple against tuple with three or more items.
fn tuple_equation_eq(gold: &Value, pred: &Value) -> Option<Option<bool>> {
    let is_eq = |v: &Value| matches!(v, Value::Eq(_) | Value::TupleEq(..));
    let open_pair = |v: &Value| {
        matches!(
            v,
            Value::Interval {
                lo_open: true,
                hi_open: true,
                ..
            }
        )
    };
    let comparable = |a: &Value, b: &Value| {
        matches!(a, Value::Expr(_) | Value::Text(_))
            || matches!(b, Value::Expr(_) | Value::Text(_))
            || matches!((a, b), (Value::Tuple(_), Value::Tuple(_)))
            || (open_pair(a) && open_pair(b))
    };
    match (gold, pred) {
        (Value::TupleEq(..), Value::TupleEq(..)) => Some(None),
        (g, Value::TupleEq(_, r)) if !is_eq(g) => {
            Some(if comparable(g, r) { equal(g, r) } else { None })
        }
        (Value::TupleEq(l, r), p) if !is_eq(p) => {
            let items: &[Value] = match &**l {
                Value::Tuple(v) => v,
                _ => &[],
            };
            let symbols = match &**l {
                Value::Interval { lo, hi, .. } => {
                    matches!(lo, Node::Sym(_)) && matches!(hi, Node::Sym(_))
                }
                _ => items
                    .iter()
                    .all(|x| matches!(x, Value::Expr(Node::Sym(_)) | Value::Text(_))),
            };
            if !symbols {
                return Some(None);
            }
            Some(if comparable(r, p) { equal(r, p) } else { None })
        }
        (Value::TupleEq(..), _) | (_, Value::TupleEq(..)) => Some(None),
        _ => None,
    }
}

/// `lhs OP rhs` linear in one variable with a nonzero coefficient, solved:
/// (variable, relation of the variable to the constant, the constant).
fn linear_solution(
    op: super::parse::RelOp,
    l: &Node,
    r: &Node,
) -> Option<(String, super::parse::RelOp, Rat)> {
    let mut syms = Vec::new();
    collect_syms(l, &mut syms);
    collect_syms(r, &mut syms);
    if syms.len() != 1 || has_opaque(l) || has_opaque(r) {
        return None;
    }
    let x = syms.pop()?;
    let (a1, b1) = linear(l, &x)?;
    let (a2, b2) = linear(r, &x)?;
    let a = a1.plus(a2.negate()?)?;
    let b = b1.plus(b2.negate()?)?;
    if a.n == 0 {
        return None;
    }
    // a x + b OP 0  ->  x OP' -b/a, the relation flipped when a < 0
    let c = b.negate()?.over(a)?;
    let op = if a.n < 0 { op.flipped() } else { op };
    Some((x, op, c))
}

/// `n` as a x + b with exact rationals, when it is linear in `x`.
fn linear(n: &Node, x: &str) -> Option<(Rat, Rat)> {
    let zero = Rat::int(0);
    Some(match n {
        Node::Num { v, float: false } | Node::Frac(v) => (zero, *v),
        Node::Sym(s) if s == x => (Rat::int(1), zero),
        Node::Add(ts) => {
            let (mut a, mut b) = (zero, zero);
            for t in ts {
                let (ta, tb) = linear(t, x)?;
                a = a.plus(ta)?;
                b = b.plus(tb)?;
            }
            (a, b)
        }
        Node::Neg(t) => {
            let (a, b) = linear(t, x)?;
            (a.negate()?, b.negate()?)
        }
        Node::Mul(ts) => {
            let (mut a, mut b) = (zero, Rat::int(1));
            for t in ts {
                let (ta, tb) = linear(t, x)?;
                if a.n != 0 && ta.n != 0 {
                    return None;
                }
                (a, b) = (a.times(tb)?.plus(ta.times(b)?)?, b.times(tb)?);
            }
            (a, b)
        }
        Node::Div(p, q) => {
            let (pa, pb) = linear(p, x)?;
            let (qa, qb) = linear(q, x)?;
            if qa.n != 0 || qb.n == 0 {
                return None;
            }
            (pa.over(qb)?, pb.over(qb)?)
        }
        _ => return None,
    })
}

/// A word (a sympy Symbol named after it) against an expression, by the
/// reference's `sympy_compare_symbols`: E is the symbol "e"; a product of
/// letters is compared as the letters concatenated (kept as written); a symbol
/// by name; anything else by its printed form, which has operators or
/// digits in it and so never equals a word.
fn text_vs_expr(w: &str, n: &Node) -> Option<bool> {
    match n {
        Node::E => Some(w == "e"),
        Node::Sym(s) => Some(s == w),
        Node::Mul(xs) => {
            let letters: Option<Vec<char>> = xs
                .iter()
                .map(|x| match x {
                    Node::Sym(s) if s.len() == 1 => s.chars().next(),
                    Node::E => Some('e'),
                    _ => None,
                })
                .collect();
            let Some(letters) = letters else {
                // a product with a number or a compound factor prints with '*'
                return Some(false);
            };
            let word: String = letters.iter().collect();
            if word.eq_ignore_ascii_case(w) {
                return Some(true);
            }
            let mut a: Vec<char> = word.to_ascii_lowercase().chars().collect();
            let mut b: Vec<char> = w.to_ascii_lowercase().chars().collect();
            a.sort_unstable();
            b.sort_unstable();
            // other letters: no order of them spells the word
            if a != b {
                Some(false)
            } else {
                None
            }
        }
        Node::Inf => None,
        _ if has_inf(n) => None,
        _ => Some(false),
    }
}

fn interval_end_eq(a: &Node, b: &Node) -> Option<bool> {
    let ia = has_inf(a);
    let ib = has_inf(b);
    if ia || ib {
        let sign = |n: &Node| -> Option<i8> {
            match n {
                Node::Inf => Some(1),
                Node::Neg(x) if **x == Node::Inf => Some(-1),
                _ => None,
            }
        };
        return match (sign(a), sign(b)) {
            (Some(x), Some(y)) => Some(x == y),
            (Some(_), None) | (None, Some(_)) if !(ia && ib) => Some(false),
            _ => None,
        };
    }
    expr_eq(a, b)
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse_answer;
    use super::*;

    fn eq(g: &str, p: &str) -> Option<bool> {
        equal(&parse_answer(g).unwrap(), &parse_answer(p).unwrap())
    }

    #[test]
    fn numbers() {
        assert_eq!(eq("5", "5.0"), Some(true));
        assert_eq!(eq("5", "5.0000001"), Some(false));
        assert_eq!(eq("\\frac{1}{3}", "0.333333"), Some(true));
        assert_eq!(eq("\\frac{1}{3}", "0.33333"), Some(false));
        assert_eq!(eq("2.5", "2.5000001"), Some(true));
        assert_eq!(eq("10", "10\\%"), Some(true));
        assert_eq!(eq("10", "10.0\\%"), Some(false));
        assert_eq!(eq("0.1", "10\\%"), Some(true));
        assert_eq!(eq("\\sqrt{2}", "\\frac{\\sqrt{8}}{2}"), Some(true));
        assert_eq!(eq("6", "2\\times 3"), Some(true));
        assert_eq!(eq("2\\pi", "6.283185"), Some(true));
        assert_eq!(eq("\\sqrt{2}", "1.41421"), Some(false));
        assert_eq!(eq("12", "13"), Some(false));
    }

    /// Tiny and underflowing values: never "equal" by an absolute tolerance
    /// (math-verify 0.9.0 says False to each pair below).
    #[test]
    fn tiny_values_are_not_equal_to_zero_or_each_other() {
        for (g, p) in [
            ("10^{-13}", "\\sqrt{2}\\cdot 10^{-13}"),
            ("e^{-31}", "e^{-30}"),
            ("0", "e^{-30}"),
            ("0", "\\pi\\cdot10^{-12}"),
            ("0", "\\sin(10^{-12})"),
            ("0", "10^{-400}"),
            ("0", "\\frac{1}{10^{400}}"),
            ("0", "e^{-1000}"),
        ] {
            assert_ne!(eq(g, p), Some(true), "gold {g} vs prediction {p}");
        }
        assert_eq!(eq("e^{-30}", "e^{-30}"), Some(true));
    }

    #[test]
    fn structures() {
        assert_eq!(eq("5", "x = 5"), Some(true));
        assert_eq!(eq("x=5", "5"), Some(true));
        assert_eq!(eq("x=5", "y=5"), Some(false));
        assert_eq!(eq("\\{1,2\\}", "2,1"), Some(true));
        assert_eq!(eq("(1,2)", "(1,2)"), Some(true));
        assert_eq!(eq("[1,2)", "[1,2]"), Some(false));
        assert_eq!(eq("(1,2,3)", "(1,3,2)"), Some(false));
        // a gold set against an open interval: sorted; a predicted set: as written
        assert_eq!(eq("2,1", "(1,2)"), Some(true));
        assert_eq!(eq("(1,2)", "2,1"), Some(false));
        assert_eq!(eq("4a-2", "-2+4a"), Some(true));
        // real symbols: sqrt(y^2) is |y|
        assert_ne!(eq("y", "\\sqrt{y^2}"), Some(true));
        assert_ne!(eq("x+y", "x+\\sqrt{y^2}"), Some(true));
        assert_eq!(eq("(x+y)^2", "x^2+2xy+y^2"), Some(true));
        assert_eq!(eq("\\text{Evelyn}", "\\text{evelyn}"), Some(true));
    }
}
