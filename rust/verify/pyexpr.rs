//! Plain-text arithmetic (`3 + 4`, `2*3.`, `(1/9)`) as the reference reads it
//! with Python syntax (`^` means power). Input is at most a few hundred bytes
//! (the extractor caps expression runs); recursion depth is capped.

use super::num::parse_decimal;
use super::parse::Node;

#[derive(Debug, PartialEq)]
pub enum PyErr {
    /// Python would reject it (syntax error): the candidate fails
    Syntax,
    /// valid but outside what we reproduce
    Unsupported,
}

#[derive(Clone, Debug, PartialEq)]
enum T {
    Num(String),
    Op(&'static str),
}

fn lex(s: &str) -> Result<Vec<T>, PyErr> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() || c == b'.' {
            let st = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            if i < b.len() && b[i] == b'.' {
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
            }
            let tok = &s[st..i];
            if tok == "." {
                return Err(PyErr::Syntax);
            }
            // 007 is a syntax error in Python 3, but sympy's tokenizer may accept it
            if tok.len() > 1 && tok.starts_with('0') && !tok.starts_with("0.") {
                return Err(PyErr::Unsupported);
            }
            out.push(T::Num(tok.to_string()));
            continue;
        }
        let op: &'static str = match c {
            b'*' if b.get(i + 1) == Some(&b'*') => "**",
            b'^' => "**",
            b'/' if b.get(i + 1) == Some(&b'/') => return Err(PyErr::Unsupported),
            b'+' => "+",
            b'-' => "-",
            b'*' => "*",
            b'/' => "/",
            b'(' => "(",
            b')' => ")",
            _ => return Err(PyErr::Syntax),
        };
        i += if op == "**" && c == b'*' { 2 } else { 1 };
        out.push(T::Op(op));
    }
    Ok(out)
}

struct P {
    t: Vec<T>,
    i: usize,
    depth: usize,
}

impl P {
    fn peek_op(&self) -> Option<&'static str> {
        match self.t.get(self.i) {
            Some(T::Op(o)) => Some(o),
            _ => None,
        }
    }
    fn enter(&mut self) -> Result<(), PyErr> {
        self.depth += 1;
        if self.depth > 64 {
            Err(PyErr::Unsupported)
        } else {
            Ok(())
        }
    }
    fn sum(&mut self) -> Result<Node, PyErr> {
        self.enter()?;
        let mut terms = vec![self.prod()?];
        while let Some(o) = self.peek_op() {
            if o == "+" || o == "-" {
                self.i += 1;
                let t = self.prod()?;
                terms.push(if o == "-" { Node::Neg(Box::new(t)) } else { t });
            } else {
                break;
            }
        }
        self.depth -= 1;
        Ok(Node::sum(terms))
    }
    fn prod(&mut self) -> Result<Node, PyErr> {
        self.enter()?;
        let mut acc = self.unary()?;
        while let Some(o) = self.peek_op() {
            if o == "*" {
                self.i += 1;
                let r = self.unary()?;
                acc = Node::Mul(vec![acc, r]);
            } else if o == "/" {
                self.i += 1;
                let r = self.unary()?;
                acc = Node::Div(Box::new(acc), Box::new(r));
            } else {
                break;
            }
        }
        self.depth -= 1;
        Ok(acc)
    }
    fn unary(&mut self) -> Result<Node, PyErr> {
        self.enter()?;
        let r = match self.peek_op() {
            Some("-") => {
                self.i += 1;
                Node::Neg(Box::new(self.unary()?))
            }
            Some("+") => {
                self.i += 1;
                self.unary()?
            }
            _ => self.power()?,
        };
        self.depth -= 1;
        Ok(r)
    }
    fn power(&mut self) -> Result<Node, PyErr> {
        self.enter()?;
        let base = self.atom()?;
        let r = if self.peek_op() == Some("**") {
            self.i += 1;
            let e = self.unary()?;
            Node::Pow(Box::new(base), Box::new(e))
        } else {
            base
        };
        self.depth -= 1;
        Ok(r)
    }
    fn atom(&mut self) -> Result<Node, PyErr> {
        match self.t.get(self.i).cloned() {
            Some(T::Num(s)) => {
                self.i += 1;
                // a number directly followed by "(" is a call in Python: error
                if self.peek_op() == Some("(") || matches!(self.t.get(self.i), Some(T::Num(_))) {
                    return Err(PyErr::Syntax);
                }
                let v = parse_decimal(&s).ok_or(PyErr::Unsupported)?;
                Ok(Node::Num {
                    v,
                    float: s.contains('.'),
                })
            }
            Some(T::Op("(")) => {
                self.i += 1;
                let e = self.sum()?;
                if self.peek_op() != Some(")") {
                    return Err(PyErr::Syntax);
                }
                self.i += 1;
                if self.peek_op() == Some("(") || matches!(self.t.get(self.i), Some(T::Num(_))) {
                    return Err(PyErr::Syntax);
                }
                Ok(e)
            }
            _ => Err(PyErr::Syntax),
        }
    }
}

/// Parse a plain-text arithmetic expression. The returned tree is "composite"
/// (never an atomic literal) unless the text is a single number.
pub fn parse_py(s: &str) -> Result<Node, PyErr> {
    let t = lex(&s.replace('\n', " "))?;
    if t.is_empty() {
        return Err(PyErr::Syntax);
    }
    let mut p = P { t, i: 0, depth: 0 };
    let e = p.sum()?;
    if p.i != p.t.len() {
        return Err(PyErr::Syntax);
    }
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_python_arithmetic() {
        assert!(parse_py("3 + 4").is_ok());
        assert!(parse_py("2*3.").is_ok());
        assert_eq!(parse_py("2 (3)"), Err(PyErr::Syntax));
        assert_eq!(parse_py("(1/9"), Err(PyErr::Syntax));
        assert_eq!(parse_py("3 + "), Err(PyErr::Syntax));
        assert_eq!(parse_py("2 3"), Err(PyErr::Syntax));
        assert!(parse_py("2^3").is_ok());
    }
}
