//! Exact rationals on i128 with checked arithmetic (overflow -> None, never a panic).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rat {
    pub n: i128,
    pub d: i128, // always > 0, gcd(n, d) == 1
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    a = a.abs();
    b = b.abs();
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

impl Rat {
    pub fn int(n: i128) -> Rat {
        Rat { n, d: 1 }
    }

    pub fn new(n: i128, d: i128) -> Option<Rat> {
        if d == 0 {
            return None;
        }
        let g = gcd(n, d);
        let g = if g == 0 { 1 } else { g };
        let (mut n, mut d) = (n / g, d / g);
        if d < 0 {
            n = n.checked_neg()?;
            d = d.checked_neg()?;
        }
        Some(Rat { n, d })
    }

    pub fn is_int(&self) -> bool {
        self.d == 1
    }

    pub fn plus(self, o: Rat) -> Option<Rat> {
        let n = self
            .n
            .checked_mul(o.d)?
            .checked_add(o.n.checked_mul(self.d)?)?;
        Rat::new(n, self.d.checked_mul(o.d)?)
    }

    pub fn negate(self) -> Option<Rat> {
        Some(Rat {
            n: self.n.checked_neg()?,
            d: self.d,
        })
    }

    pub fn minus(self, o: Rat) -> Option<Rat> {
        self.plus(o.negate()?)
    }

    pub fn times(self, o: Rat) -> Option<Rat> {
        let g1 = gcd(self.n, o.d).max(1);
        let g2 = gcd(o.n, self.d).max(1);
        let n = (self.n / g1).checked_mul(o.n / g2)?;
        let d = (self.d / g2).checked_mul(o.d / g1)?;
        Rat::new(n, d)
    }

    pub fn over(self, o: Rat) -> Option<Rat> {
        if o.n == 0 {
            return None;
        }
        self.times(Rat::new(o.d, o.n)?)
    }

    pub fn pow(self, e: i128) -> Option<Rat> {
        if e.unsigned_abs() > 256 {
            return None;
        }
        let mut r = Rat::int(1);
        for _ in 0..e.unsigned_abs() {
            r = r.times(self)?;
        }
        if e < 0 {
            Rat::int(1).over(r)
        } else {
            Some(r)
        }
    }

    pub fn to_f64(self) -> f64 {
        self.n as f64 / self.d as f64
    }

    /// Exact square root when numerator and denominator are perfect squares.
    pub fn sqrt(self) -> Option<Rat> {
        if self.n < 0 {
            return None;
        }
        let a = isqrt(self.n)?;
        let b = isqrt(self.d)?;
        Rat::new(a, b)
    }

    /// Round to `k` decimals (half away from zero at the exact midpoint is
    /// ambiguous between the reference's float rounding modes: returns None there).
    pub fn round_decimals(self, k: u32) -> Option<i128> {
        let scale = 10i128.checked_pow(k)?;
        let num = self.n.checked_mul(scale)?;
        let q = num.div_euclid(self.d);
        let r = num.rem_euclid(self.d);
        let twice = r.checked_mul(2)?;
        if twice == self.d {
            return None;
        }
        Some(if twice > self.d { q + 1 } else { q })
    }
}

fn isqrt(v: i128) -> Option<i128> {
    if v < 0 {
        return None;
    }
    let mut x = (v as f64).sqrt() as i128;
    while x > 0 && x.checked_mul(x)? > v {
        x -= 1;
    }
    while (x + 1).checked_mul(x + 1)? <= v {
        x += 1;
    }
    if x * x == v {
        Some(x)
    } else {
        None
    }
}

/// Parse a decimal literal ("12", "3.50", "007") exactly.
pub fn parse_decimal(s: &str) -> Option<Rat> {
    let (ip, fp) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    if ip.is_empty() && fp.is_empty() {
        return None;
    }
    if !ip.bytes().all(|c| c.is_ascii_digit()) || !fp.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    if ip.len() + fp.len() > 36 {
        return None;
    }
    let digits = format!("{ip}{fp}");
    let n: i128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let d = 10i128.checked_pow(fp.len() as u32)?;
    Rat::new(n, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_and_rounding() {
        let h = Rat::new(1, 2).unwrap();
        assert_eq!(h.plus(h).unwrap(), Rat::int(1));
        assert_eq!(Rat::new(2, -4).unwrap(), Rat::new(-1, 2).unwrap());
        assert_eq!(parse_decimal("3.50").unwrap(), Rat::new(7, 2).unwrap());
        assert_eq!(Rat::new(1, 3).unwrap().round_decimals(6), Some(333333));
        assert_eq!(
            Rat::new(4, 9).unwrap().sqrt(),
            Some(Rat::new(2, 3).unwrap())
        );
        assert_eq!(Rat::int(i128::MAX).plus(Rat::int(1)), None);
        assert_eq!(Rat::int(10).pow(50), None);
        assert_eq!(Rat::new(1, 0), None);
    }
}
