//! Values read from shards' text-format results, typed by their column's
//! type OID: compared, grouped and combined the way PostgreSQL would.

use std::cmp::Ordering;

use super::decimal::Numeric;

/// Type OIDs the merge understands.
pub mod oid {
    pub const BOOL: u32 = 16;
    pub const BYTEA: u32 = 17;
    pub const NAME: u32 = 19;
    pub const INT8: u32 = 20;
    pub const INT2: u32 = 21;
    pub const INT4: u32 = 23;
    pub const TEXT: u32 = 25;
    pub const OID: u32 = 26;
    pub const FLOAT4: u32 = 700;
    pub const FLOAT8: u32 = 701;
    pub const BPCHAR: u32 = 1042;
    pub const VARCHAR: u32 = 1043;
    pub const DATE: u32 = 1082;
    pub const TIME: u32 = 1083;
    pub const TIMESTAMP: u32 = 1114;
    pub const TIMESTAMPTZ: u32 = 1184;
    pub const INTERVAL: u32 = 1186;
    pub const NUMERIC: u32 = 1700;
    pub const UUID: u32 = 2950;
    pub const CHAR: u32 = 18;
}

/// How a column's values compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Int,
    Numeric,
    Float,
    Bool,
    /// Text types: byte order (the C collation); `bpchar` ignores trailing spaces.
    Text {
        padded: bool,
    },
    /// Byte order of the text form is the value order (uuid, bytea hex, time).
    Bytes,
    Date,
    Timestamp {
        tz: bool,
    },
    /// Equality by text form only (enums, arrays, jsonb, ...): no order.
    Opaque,
    /// Neither order nor equality by text form is right (interval).
    Unsupported,
}

impl Kind {
    pub fn of(type_oid: u32) -> Kind {
        use oid::*;
        match type_oid {
            INT2 | INT4 | INT8 | OID => Kind::Int,
            NUMERIC => Kind::Numeric,
            FLOAT4 | FLOAT8 => Kind::Float,
            BOOL => Kind::Bool,
            TEXT | VARCHAR | NAME | CHAR => Kind::Text { padded: false },
            BPCHAR => Kind::Text { padded: true },
            UUID | BYTEA | TIME => Kind::Bytes,
            DATE => Kind::Date,
            TIMESTAMP => Kind::Timestamp { tz: false },
            TIMESTAMPTZ => Kind::Timestamp { tz: true },
            INTERVAL => Kind::Unsupported,
            _ => Kind::Opaque,
        }
    }

    pub fn is_text(self) -> bool {
        matches!(self, Kind::Text { .. })
    }

    pub fn ordered(self) -> bool {
        !matches!(self, Kind::Opaque | Kind::Unsupported)
    }

    pub fn groupable(self) -> bool {
        self != Kind::Unsupported
    }
}

/// A value decoded for comparison.
#[derive(Debug, Clone)]
pub enum Val {
    Int(i128),
    Num(Numeric),
    Float(f64),
    Bool(bool),
    Bytes(Vec<u8>),
    /// Date or timestamp as (infinity rank, microseconds): -1, 0 or 1 first.
    Time(i8, i128),
}

/// Why a value could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadValue(pub String);

pub fn decode(kind: Kind, raw: &[u8]) -> Result<Val, BadValue> {
    let text = || std::str::from_utf8(raw).map_err(|_| BadValue("not UTF-8".into()));
    let bad = |what: &str| {
        BadValue(format!(
            "cannot read {what} value {:?}",
            String::from_utf8_lossy(raw)
        ))
    };
    Ok(match kind {
        Kind::Int => Val::Int(text()?.parse().map_err(|_| bad("integer"))?),
        Kind::Numeric => Val::Num(Numeric::parse(text()?).ok_or_else(|| bad("numeric"))?),
        Kind::Float => Val::Float(parse_float(text()?).ok_or_else(|| bad("float"))?),
        Kind::Bool => Val::Bool(match raw {
            b"t" => true,
            b"f" => false,
            _ => return Err(bad("boolean")),
        }),
        Kind::Text { padded: true } => {
            let end = raw.iter().rposition(|&b| b != b' ').map_or(0, |i| i + 1);
            Val::Bytes(raw[..end].to_vec())
        }
        Kind::Text { padded: false } | Kind::Bytes | Kind::Opaque => Val::Bytes(raw.to_vec()),
        Kind::Date => {
            let (rank, days) =
                parse_date(text()?).ok_or_else(|| bad("date (DateStyle must be ISO)"))?;
            Val::Time(rank, days as i128 * 86_400_000_000)
        }
        Kind::Timestamp { tz } => {
            let (rank, us) = parse_timestamp(text()?, tz)
                .ok_or_else(|| bad("timestamp (DateStyle must be ISO)"))?;
            Val::Time(rank, us)
        }
        Kind::Unsupported => return Err(bad("interval")),
    })
}

pub fn parse_float(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => s.parse().ok(),
    }
}

/// PostgreSQL's float order: NaN above everything, all NaNs equal, -0 = 0.
fn float_cmp(a: f64, b: f64) -> Ordering {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        _ => a.partial_cmp(&b).unwrap_or(Ordering::Equal),
    }
}

/// Compares two decoded values of one column.
pub fn compare(a: &Val, b: &Val) -> Ordering {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => x.cmp(y),
        (Val::Num(x), Val::Num(y)) => x.compare(y),
        (Val::Float(x), Val::Float(y)) => float_cmp(*x, *y),
        (Val::Bool(x), Val::Bool(y)) => x.cmp(y),
        (Val::Bytes(x), Val::Bytes(y)) => x.cmp(y),
        (Val::Time(r1, x), Val::Time(r2, y)) => (r1, x).cmp(&(r2, y)),
        // Mixed kinds (HAVING against a literal): compare as numbers when both are.
        (x, y) => match (as_numeric(x), as_numeric(y)) {
            (Some(p), Some(q)) => p.compare(&q),
            _ => Ordering::Equal,
        },
    }
}

fn as_numeric(v: &Val) -> Option<Numeric> {
    use super::decimal::Decimal;
    match v {
        Val::Int(i) => Some(Numeric::Finite(Decimal::from_int(*i))),
        Val::Num(n) => Some(n.clone()),
        Val::Float(f) if f.is_finite() => Decimal::parse(&format!("{f:e}")).map(Numeric::Finite),
        Val::Float(f) if f.is_nan() => Some(Numeric::NaN),
        Val::Float(f) if *f > 0.0 => Some(Numeric::PosInf),
        Val::Float(_) => Some(Numeric::NegInf),
        _ => None,
    }
}

/// The bytes that identify a value for grouping: equal values, equal keys.
pub fn group_key(kind: Kind, raw: &[u8], out: &mut Vec<u8>) -> Result<(), BadValue> {
    match kind {
        Kind::Numeric => match decode(kind, raw)? {
            Val::Num(Numeric::Finite(d)) => {
                out.extend_from_slice(d.normalized().to_string().as_bytes())
            }
            other => out.extend_from_slice(format!("{other:?}").as_bytes()),
        },
        Kind::Float => match decode(kind, raw)? {
            Val::Float(0.0) => out.push(b'0'),
            Val::Float(f) if f.is_nan() => out.extend_from_slice(b"NaN"),
            Val::Float(f) => out.extend_from_slice(&f.to_bits().to_be_bytes()),
            _ => {}
        },
        Kind::Text { padded: true } => {
            if let Val::Bytes(b) = decode(kind, raw)? {
                out.extend_from_slice(&b);
            }
        }
        Kind::Timestamp { tz: true } => {
            if let Val::Time(r, us) = decode(kind, raw)? {
                out.extend_from_slice(format!("{r}:{us}").as_bytes());
            }
        }
        Kind::Unsupported => {
            return Err(BadValue(
                "interval values cannot be grouped across shards".into(),
            ))
        }
        _ => out.extend_from_slice(raw),
    }
    Ok(())
}

/// `float8out`: the shortest text that reads back as the same value, in
/// fixed notation for decimal exponents -4..15 and `1e+20` style otherwise.
pub fn format_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0" } else { "0" }.into();
    }
    // `{:e}` is the shortest round-trip digits: "d.ddde±x".
    let sci = format!("{f:e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if (-4..15).contains(&exp) {
        return format!("{f}");
    }
    let sign = if exp < 0 { '-' } else { '+' };
    format!("{mant}e{sign}{:02}", exp.abs())
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// A date or timestamp's text: `infinity`/`-infinity` as a rank, or the
/// value without its ` BC` suffix and whether it had one.
enum Era<'a> {
    Infinite(i8),
    Finite(&'a str, bool),
}

fn era(s: &str) -> Era<'_> {
    match s {
        "infinity" => Era::Infinite(1),
        "-infinity" => Era::Infinite(-1),
        _ => match s.strip_suffix(" BC") {
            Some(rest) => Era::Finite(rest, true),
            None => Era::Finite(s, false),
        },
    }
}

/// `YYYY-MM-DD[ BC]`, `infinity`, `-infinity` → (rank, days since 1970-01-01).
fn parse_date(s: &str) -> Option<(i8, i64)> {
    let (s, bc) = match era(s) {
        Era::Infinite(rank) => return Some((rank, 0)),
        Era::Finite(s, bc) => (s, bc),
    };
    let mut it = s.splitn(3, '-');
    let y: i64 = it.next()?.parse().ok()?;
    let m: i64 = it.next()?.parse().ok()?;
    let d: i64 = it.next()?.parse().ok()?;
    let y = if bc { 1 - y } else { y };
    Some((0, days_from_civil(y, m, d)))
}

/// Microseconds since 1970-01-01 (UTC when `tz`) of a finite ISO timestamp.
pub(super) fn timestamp_us(s: &str, tz: bool) -> Option<i128> {
    match parse_timestamp(s, tz)? {
        (0, us) => Some(us),
        _ => None,
    }
}

/// ISO timestamps, with a `+hh[:mm[:ss]]` offset when `tz`.
fn parse_timestamp(s: &str, tz: bool) -> Option<(i8, i128)> {
    let (s, bc) = match era(s) {
        Era::Infinite(rank) => return Some((rank, 0)),
        Era::Finite(s, bc) => (s, bc),
    };
    let (date, time) = s.split_once(' ')?;
    let (_, days) = parse_date(&if bc {
        format!("{date} BC")
    } else {
        date.to_string()
    })?;
    let (clock, offset) = if tz {
        let at = time.rfind(['+', '-'])?;
        let (c, o) = time.split_at(at);
        let sign: i128 = if o.starts_with('-') { -1 } else { 1 };
        let mut secs: i128 = 0;
        for (i, part) in o[1..].split(':').enumerate() {
            let v: i128 = part.parse().ok()?;
            secs += v * [3600, 60, 1].get(i)?;
        }
        (c, sign * secs)
    } else {
        (time, 0)
    };
    let mut parts = clock.splitn(3, ':');
    let h: i128 = parts.next()?.parse().ok()?;
    let mi: i128 = parts.next()?.parse().ok()?;
    let sec = parts.next()?;
    let (whole, frac) = sec.split_once('.').unwrap_or((sec, ""));
    let whole: i128 = whole.parse().ok()?;
    let frac_us: i128 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<6}").get(..6)?.parse().ok()?
    };
    let us = ((days as i128 * 86_400 + h * 3600 + mi * 60 + whole - offset) * 1_000_000) + frac_us;
    Some((0, us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_float8out() {
        for (f, s) in [
            (1.5, "1.5"),
            (0.1, "0.1"),
            (1e20, "1e+20"),
            (1.5e-5, "1.5e-05"),
            (123456789012345.0, "123456789012345"),
            (1234567890123456.0, "1.234567890123456e+15"),
            (0.0001, "0.0001"),
            (-2.0, "-2"),
        ] {
            assert_eq!(format_float(f), s);
        }
    }

    #[test]
    fn orders() {
        let t = |s: &str| decode(Kind::Timestamp { tz: true }, s.as_bytes()).unwrap();
        assert_eq!(
            compare(&t("2024-03-31 01:30:00+01"), &t("2024-03-31 01:00:00+00")),
            Ordering::Less
        );
        assert_eq!(
            compare(&t("infinity"), &t("2024-03-31 01:00:00+00")),
            Ordering::Greater
        );
        let d = |s: &str| decode(Kind::Date, s.as_bytes()).unwrap();
        assert_eq!(
            compare(&d("0044-03-15 BC"), &d("0001-01-01")),
            Ordering::Less
        );
        let n = |s: &str| decode(Kind::Numeric, s.as_bytes()).unwrap();
        assert_eq!(compare(&n("NaN"), &n("Infinity")), Ordering::Greater);
        assert_eq!(compare(&n("-1.50"), &n("-1.5")), Ordering::Equal);
        let f = |s: &str| decode(Kind::Float, s.as_bytes()).unwrap();
        assert_eq!(compare(&f("NaN"), &f("Infinity")), Ordering::Greater);
        let b = |s: &str| decode(Kind::Text { padded: true }, s.as_bytes()).unwrap();
        assert_eq!(compare(&b("ab  "), &b("ab")), Ordering::Equal);
    }
}
