//! Exact zero test for rational functions, by evaluation modulo a prime.
//!
//! sympy's `simplify(a - b)` is zero for a rational function of the symbols
//! (with `e` and `pi` as further independent generators, as its polynomial
//! code treats them) exactly when that function is identically zero. We decide
//! the same question without expanding anything: evaluate at random points in
//! the field of integers modulo P = 2^61 - 1. A nonzero rational function whose
//! numerator has total degree D vanishes at a uniformly random point with
//! probability at most D / P (Schwartz-Zippel); [`POINTS`] points are tried, so
//! a false "zero" needs that to happen at every one of them (below 1e-60 for
//! the degrees [`MAX_EXPONENT`] and [`MAX_NODES`] allow). A point where a
//! denominator vanishes is skipped.

use super::compare::{any_node, collect_syms};
use super::num::Rat;
use super::parse::Node;

const P: u64 = (1 << 61) - 1;
/// Points tried; all that avoid a pole must give zero.
const POINTS: usize = 4;
/// Powers with a larger exponent are not tested: sympy expands them inside
/// simplify, which can run past math-verify's 5 s limit (it then says False):
/// `((a+b+c+d)(a-b+c-d))^{12} - ((a+c)^2-(b+d)^2)^{12}` takes over 5 s.
pub const MAX_EXPONENT: i128 = 4;
/// Nor expressions with more nodes (both sides together) or more generators
/// (symbols, e, pi): a sum of six fractions in six variables takes 2.8 s on a
/// 2-core box, five in five 0.45 s.
pub const MAX_NODES: usize = 110;
pub const MAX_GENERATORS: usize = 5;

#[derive(Debug, PartialEq)]
enum Stop {
    /// not a rational function with exact coefficients (a root, a function, a Float)
    NotRational,
    /// a denominator vanishes at this point
    Pole,
}

fn mul(a: u64, b: u64) -> u64 {
    ((a as u128 * b as u128) % P as u128) as u64
}

fn add(a: u64, b: u64) -> u64 {
    (a + b) % P
}

fn neg(a: u64) -> u64 {
    (P - a) % P
}

fn pow(mut a: u64, mut e: u64) -> u64 {
    let mut r = 1;
    while e > 0 {
        if e & 1 == 1 {
            r = mul(r, a);
        }
        a = mul(a, a);
        e >>= 1;
    }
    r
}

fn inv(a: u64) -> Result<u64, Stop> {
    if a == 0 {
        return Err(Stop::Pole);
    }
    Ok(pow(a, P - 2))
}

fn int(n: i128) -> u64 {
    n.rem_euclid(P as i128) as u64
}

fn rat(r: Rat) -> Result<u64, Stop> {
    Ok(mul(int(r.n), inv(int(r.d))?))
}

/// The value of `n` at one point; symbols, `e` and `pi` take values from `var`.
fn eval(n: &Node, var: &dyn Fn(&str) -> u64, max_exp: i128) -> Result<u64, Stop> {
    Ok(match n {
        Node::Num { v, float: false } => rat(*v)?,
        Node::Frac(v) => rat(*v)?,
        Node::Sym(s) => var(s),
        Node::E => var("\\e"),
        Node::Pi => var("\\pi"),
        Node::Add(ts) => {
            let mut acc = 0;
            for t in ts {
                acc = add(acc, eval(t, var, max_exp)?);
            }
            acc
        }
        Node::Mul(ts) => {
            let mut acc = 1;
            for t in ts {
                acc = mul(acc, eval(t, var, max_exp)?);
            }
            acc
        }
        Node::Neg(a) => neg(eval(a, var, max_exp)?),
        Node::Div(a, b) => {
            let den = eval(b, var, max_exp)?;
            mul(eval(a, var, max_exp)?, inv(den)?)
        }
        Node::Pow(a, b) => {
            let e = match **b {
                Node::Num { v, float: false } | Node::Frac(v) if v.is_int() => v.n,
                Node::Neg(ref x) => match **x {
                    Node::Num { v, float: false } if v.is_int() => -v.n,
                    _ => return Err(Stop::NotRational),
                },
                _ => return Err(Stop::NotRational),
            };
            if e.abs() > max_exp {
                return Err(Stop::NotRational);
            }
            let base = eval(a, var, max_exp)?;
            if e < 0 {
                inv(pow(base, e.unsigned_abs() as u64))?
            } else if e == 0 && base == 0 {
                // 0**0 is 1 in sympy, but a base that is zero only at this point
                // says nothing: skip the point
                return Err(Stop::Pole);
            } else {
                pow(base, e as u64)
            }
        }
        _ => return Err(Stop::NotRational),
    })
}

fn count(n: &Node) -> usize {
    1 + match n {
        Node::Add(v) | Node::Mul(v) => v.iter().map(count).sum(),
        Node::Neg(a) => count(a),
        Node::Div(a, b) | Node::Pow(a, b) => count(a) + count(b),
        _ => 0,
    }
}

/// splitmix64: a fixed sequence of points, so that verdicts are reproducible.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) % P
}

/// Whether `a - b` is identically zero as a rational function of its symbols
/// (Some(true)), certainly not (Some(false)), or not a question this test
/// answers (None: a non-rational part, too large, or a pole at every point).
pub fn identically_equal(a: &Node, b: &Node) -> Option<bool> {
    if count(a) + count(b) > MAX_NODES {
        return None;
    }
    let mut syms = Vec::new();
    collect_syms(a, &mut syms);
    collect_syms(b, &mut syms);
    let has = |k: &Node| [a, b].iter().any(|n| any_node(n, &|x| x == k));
    let constants = has(&Node::E) as usize + has(&Node::Pi) as usize;
    if syms.len() + constants > MAX_GENERATORS {
        return None;
    }
    let mut state = 0x005E_ED0F_0A75_u64;
    let mut tried = 0;
    for _ in 0..2 * POINTS {
        let vals: Vec<u64> = (0..syms.len() + 2).map(|_| next(&mut state)).collect();
        let var = |s: &str| -> u64 {
            match s {
                "\\e" => vals[syms.len()],
                "\\pi" => vals[syms.len() + 1],
                _ => vals[syms.iter().position(|x| x == s).expect("collected")],
            }
        };
        let d =
            eval(a, &var, MAX_EXPONENT).and_then(|x| Ok(add(x, neg(eval(b, &var, MAX_EXPONENT)?))));
        match d {
            Ok(0) => tried += 1,
            Ok(_) => return Some(false),
            Err(Stop::Pole) => continue,
            Err(Stop::NotRational) => return None,
        }
        if tried == POINTS {
            return Some(true);
        }
    }
    None
}

/// Whether two exact constants (integers, fractions, integer powers; no
/// symbols, Floats, roots or functions) certainly differ: their values modulo
/// P differ. Equal residues prove nothing (2^61 - 1 is 0 there), so there is no
/// "equal" answer. sympy evaluates such constants exactly, so different values
/// are never equal there, whatever the size (2^2019).
pub fn constants_differ(a: &Node, b: &Node) -> bool {
    let none = |_: &str| -> u64 { unreachable!("constants have no symbols") };
    let is_const = |n: &Node| !any_node(n, &|x| matches!(x, Node::Sym(_) | Node::E | Node::Pi));
    if !is_const(a) || !is_const(b) {
        return false;
    }
    matches!(
        (eval(a, &none, 1 << 32), eval(b, &none, 1 << 32)),
        (Ok(x), Ok(y)) if x != y
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::parse::{parse_answer, Value};

    fn node(s: &str) -> Node {
        match parse_answer(s) {
            Ok(Value::Expr(n)) => n,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn same(a: &str, b: &str) -> Option<bool> {
        identically_equal(&node(a), &node(b))
    }

    #[test]
    fn identities_and_non_identities() {
        assert_eq!(same("(x+1)^2 - x^2 - 2x", "1"), Some(true));
        assert_eq!(same("(x+1)^2 - x^2 - 2x", "2"), Some(false));
        assert_eq!(same("\\frac{x^2-1}{x-1}", "x+1"), Some(true));
        assert_eq!(same("(x+y)^3 - 3xy(x+y)", "x^3+y^3"), Some(true));
        let lagrange =
            "\\frac{a^2}{(a-b)(a-c)} + \\frac{b^2}{(b-a)(b-c)} + \\frac{c^2}{(c-a)(c-b)}";
        assert_eq!(same(lagrange, "1"), Some(true));
        assert_eq!(same(lagrange, "a+b+c"), Some(false));
        // e and pi are independent generators, not numbers
        assert_eq!(same("\\frac{e^2-1}{e-1}", "e+1"), Some(true));
        assert_eq!(same("\\pi^2", "\\pi \\cdot \\pi"), Some(true));
        assert_eq!(same("\\pi", "\\frac{22}{7}"), Some(false));
        // outside the class: roots, functions, Floats, large powers
        assert_eq!(same("\\sqrt{x^2}", "2x"), None);
        assert_eq!(same("\\sin x", "2x"), None);
        assert_eq!(same("0.5x", "\\frac{x}{2}"), None);
        assert_eq!(same("x^{100}", "x^{100}"), None);
        // a pole everywhere
        assert_eq!(same("\\frac{1}{x-x}", "0"), None);
        // too costly for sympy within math-verify's time limit: not answered
        let slow = "((a+b+c+d)(a-b+c-d))^{12} - ((a+c)^2-(b+d)^2)^{12}";
        assert_eq!(same(slow, "0"), None);
        let six = "\\frac{a^5}{(a-b)(a-c)(a-d)(a-f)(a-g)} + \\frac{b^5}{(b-a)(b-c)(b-d)(b-f)(b-g)} + \\frac{c^5}{(c-a)(c-b)(c-d)(c-f)(c-g)} + \\frac{d^5}{(d-a)(d-b)(d-c)(d-f)(d-g)} + \\frac{f^5}{(f-a)(f-b)(f-c)(f-d)(f-g)} + \\frac{g^5}{(g-a)(g-b)(g-c)(g-d)(g-f)}";
        assert_eq!(same(six, "1"), None);
    }

    #[test]
    fn exact_constants_that_differ() {
        let differ = |a: &str, b: &str| constants_differ(&node(a), &node(b));
        assert!(differ("2^{2019} - 2^{2018}", "129"));
        assert!(differ("\\frac{2011}{2^{2023066}}", "2014"));
        assert!(!differ("2^{2019} - 2^{2018}", "2^{2018}"));
        // a residue clash is not an answer, nor anything but exact arithmetic
        assert!(!differ("2^{61} - 1", "0"));
        assert!(!differ("\\sqrt{2}", "1"));
        assert!(!differ("0.5", "1"));
        assert!(!differ("\\pi", "3"));
    }
}
