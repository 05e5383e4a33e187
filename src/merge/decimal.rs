//! PostgreSQL `numeric` as the merge needs it: exact addition, comparison,
//! and the division `avg` performs, with PostgreSQL's choice of result scale
//! and its rounding (half away from zero).

use std::cmp::Ordering;

use num_bigint::{BigInt, Sign};
use num_traits::{Pow, Signed, Zero};

/// A finite numeric value: `mant / 10^scale`, printed with exactly `scale`
/// fractional digits (PostgreSQL's display scale).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    pub mant: BigInt,
    pub scale: u32,
}

/// `numeric` including its special values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Numeric {
    Finite(Decimal),
    NaN,
    PosInf,
    NegInf,
}

fn pow10(n: u32) -> BigInt {
    BigInt::from(10u32).pow(n)
}

impl Decimal {
    pub fn from_int(v: i128) -> Decimal {
        Decimal {
            mant: BigInt::from(v),
            scale: 0,
        }
    }

    /// Parses PostgreSQL's text form (`-12.340`, `1e5` as written in SQL).
    pub fn parse(s: &str) -> Option<Decimal> {
        let s = s.trim();
        let (neg, body) = match s.as_bytes().first()? {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let (body, exp) = match body.find(['e', 'E']) {
            Some(i) => (&body[..i], body[i + 1..].parse::<i32>().ok()?),
            None => (body, 0),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        if int.is_empty() && frac.is_empty()
            || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let digits = format!("{int}{frac}");
        let mut mant: BigInt = if digits.is_empty() {
            BigInt::zero()
        } else {
            digits.parse().ok()?
        };
        let mut scale = frac.len() as i64 - exp as i64;
        if scale < 0 {
            mant *= pow10((-scale) as u32);
            scale = 0;
        }
        if neg {
            mant = -mant;
        }
        Some(Decimal {
            mant,
            scale: u32::try_from(scale).ok()?,
        })
    }

    fn rescaled(&self, scale: u32) -> BigInt {
        &self.mant * pow10(scale - self.scale.min(scale))
    }

    pub fn add(&self, o: &Decimal) -> Decimal {
        let scale = self.scale.max(o.scale);
        Decimal {
            mant: self.rescaled(scale) + o.rescaled(scale),
            scale,
        }
    }

    pub fn compare(&self, o: &Decimal) -> Ordering {
        let scale = self.scale.max(o.scale);
        self.rescaled(scale).cmp(&o.rescaled(scale))
    }

    /// The value without trailing fractional zeros: equal values, equal keys.
    pub fn normalized(&self) -> Decimal {
        let mut d = self.clone();
        let ten = BigInt::from(10u32);
        while d.scale > 0 && (&d.mant % &ten).is_zero() {
            d.mant /= &ten;
            d.scale -= 1;
        }
        d
    }

    /// Weight (power of 10000) and value of the first non-zero base-10000
    /// digit, as PostgreSQL's `NumericVar` stores it; `(0, 0)` for zero.
    fn first_group(&self) -> (i64, u32) {
        if self.mant.is_zero() {
            return (0, 0);
        }
        let digits = self.mant.abs().to_string();
        let scale = self.scale as usize;
        let (int, frac) = if digits.len() > scale {
            let (i, f) = digits.split_at(digits.len() - scale);
            (i.to_string(), f.to_string())
        } else {
            (
                String::new(),
                format!("{}{digits}", "0".repeat(scale - digits.len())),
            )
        };
        let int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
        let frac = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
        let int_groups = (int.len() / 4) as i64;
        let all = format!("{int}{frac}");
        for (i, g) in all.as_bytes().chunks(4).enumerate() {
            let v: u32 = std::str::from_utf8(g)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if v != 0 {
                return (int_groups - 1 - i as i64, v);
            }
        }
        (0, 0)
    }

    /// `self / o` as PostgreSQL's `numeric_div` computes it (`select_div_scale`
    /// and rounding half away from zero). `None` when `o` is zero.
    pub fn div(&self, o: &Decimal) -> Option<Decimal> {
        if o.mant.is_zero() {
            return None;
        }
        let (w1, d1) = self.first_group();
        let (w2, d2) = o.first_group();
        let mut qweight = w1 - w2;
        if d1 <= d2 {
            qweight -= 1;
        }
        let rscale = (16 - qweight * 4)
            .max(self.scale as i64)
            .max(o.scale as i64)
            .clamp(0, 1000) as u32;
        // self/o = (m1 / 10^s1) / (m2 / 10^s2); scaled by 10^rscale.
        let num = &self.mant * pow10(rscale + o.scale);
        let den = &o.mant * pow10(self.scale);
        let (q, r) = (&num / &den, &num % &den);
        let twice = r.abs() * 2u32;
        let q = if twice >= den.abs() {
            let away = if (num.sign() == Sign::Minus) != (den.sign() == Sign::Minus) {
                -1
            } else {
                1
            };
            q + away
        } else {
            q
        };
        Some(Decimal {
            mant: q,
            scale: rscale,
        })
    }

    /// Divides by an integer count (for `avg`).
    pub fn div_count(&self, n: i128) -> Option<Decimal> {
        self.div(&Decimal::from_int(n))
    }
}

impl std::fmt::Display for Decimal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let digits = self.mant.abs().to_string();
        let scale = self.scale as usize;
        let sign = if self.mant.is_negative() { "-" } else { "" };
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = if digits.len() <= scale {
            format!("{}{digits}", "0".repeat(scale + 1 - digits.len()))
        } else {
            digits
        };
        let (i, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{i}.{frac}")
    }
}

impl Numeric {
    pub fn parse(s: &str) -> Option<Numeric> {
        match s {
            "NaN" => Some(Numeric::NaN),
            "Infinity" => Some(Numeric::PosInf),
            "-Infinity" => Some(Numeric::NegInf),
            _ => Decimal::parse(s).map(Numeric::Finite),
        }
    }

    pub fn add(&self, o: &Numeric) -> Numeric {
        use Numeric::*;
        match (self, o) {
            (NaN, _) | (_, NaN) | (PosInf, NegInf) | (NegInf, PosInf) => NaN,
            (PosInf, _) | (_, PosInf) => PosInf,
            (NegInf, _) | (_, NegInf) => NegInf,
            (Finite(a), Finite(b)) => Finite(a.add(b)),
        }
    }

    /// PostgreSQL's order: -Infinity < finite < Infinity < NaN.
    pub fn compare(&self, o: &Numeric) -> Ordering {
        use Numeric::*;
        let rank = |n: &Numeric| match n {
            NegInf => 0,
            Finite(_) => 1,
            PosInf => 2,
            NaN => 3,
        };
        match (self, o) {
            (Finite(a), Finite(b)) => a.compare(b),
            _ => rank(self).cmp(&rank(o)),
        }
    }

    /// `avg` from a sum and a non-zero count.
    pub fn div_count(&self, n: i128) -> Option<Numeric> {
        Some(match self {
            Numeric::Finite(d) => Numeric::Finite(d.div_count(n)?),
            other => other.clone(),
        })
    }
}

impl std::fmt::Display for Numeric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Numeric::Finite(d) => d.fmt(f),
            Numeric::NaN => f.write_str("NaN"),
            Numeric::PosInf => f.write_str("Infinity"),
            Numeric::NegInf => f.write_str("-Infinity"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        Decimal::parse(s).unwrap()
    }

    #[test]
    fn parse_print_add() {
        for s in [
            "0",
            "-1.50",
            "123.000",
            "0.0001",
            "-0.5",
            "99999999999999999999999.123",
        ] {
            assert_eq!(d(s).to_string(), s);
        }
        assert_eq!(d("1.5").add(&d("-2.25")).to_string(), "-0.75");
        assert_eq!(d("1.50").normalized().to_string(), "1.5");
        assert_eq!(d("1e3").to_string(), "1000");
    }

    /// Expected values are PostgreSQL 15's `avg` output for the same inputs.
    #[test]
    fn division_scale_matches_postgres() {
        let cases = [
            ("3", 2, "1.5000000000000000"),
            ("10", 3, "3.3333333333333333"),
            ("-10", 3, "-3.3333333333333333"),
            ("2", 3, "0.66666666666666666667"),
            ("123456789", 7, "17636684.142857142857"),
            ("1.25", 2, "0.62500000000000000000"),
            ("0", 5, "0.00000000000000000000"),
            ("100000", 1, "100000.000000000000"),
            ("5", 2, "2.5000000000000000"),
        ];
        for (sum, n, want) in cases {
            assert_eq!(d(sum).div_count(n).unwrap().to_string(), want, "{sum}/{n}");
        }
    }
}
