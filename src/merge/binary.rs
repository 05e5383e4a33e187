//! Binary result format for merged rows: the shards answer the merge in
//! text; a client that asked for binary gets each value re-encoded here, for
//! the types whose binary form the proxy knows.

use super::decimal::{Decimal, Numeric};
use super::value::{oid, parse_float};

const JSON: u32 = 114;
const JSONB: u32 = 3802;
const UNKNOWN: u32 = 705;

/// Microseconds and days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;
const PG_EPOCH_US: i128 = PG_EPOCH_DAYS as i128 * 86_400_000_000;

/// Whether values of this type can be sent in binary.
pub fn encodable(type_oid: u32) -> bool {
    use oid::*;
    matches!(
        type_oid,
        BOOL | INT2
            | INT4
            | INT8
            | OID
            | FLOAT4
            | FLOAT8
            | TEXT
            | VARCHAR
            | BPCHAR
            | NAME
            | CHAR
            | JSON
            | JSONB
            | UNKNOWN
            | UUID
            | BYTEA
            | DATE
            | TIME
            | TIMESTAMP
            | TIMESTAMPTZ
            | NUMERIC
    )
}

/// The binary form of a value given in PostgreSQL's text form.
pub fn encode(type_oid: u32, text: &[u8]) -> Result<Vec<u8>, String> {
    use oid::*;
    let s = || std::str::from_utf8(text).map_err(|_| "value is not UTF-8".to_string());
    let bad = || {
        format!(
            "cannot encode {:?} in binary",
            String::from_utf8_lossy(text)
        )
    };
    Ok(match type_oid {
        BOOL => vec![u8::from(text == b"t")],
        INT2 => s()?
            .parse::<i16>()
            .map_err(|_| bad())?
            .to_be_bytes()
            .to_vec(),
        INT4 => s()?
            .parse::<i32>()
            .map_err(|_| bad())?
            .to_be_bytes()
            .to_vec(),
        INT8 => s()?
            .parse::<i64>()
            .map_err(|_| bad())?
            .to_be_bytes()
            .to_vec(),
        OID => s()?
            .parse::<u32>()
            .map_err(|_| bad())?
            .to_be_bytes()
            .to_vec(),
        FLOAT4 => (parse_float(s()?).ok_or_else(bad)? as f32)
            .to_be_bytes()
            .to_vec(),
        FLOAT8 => parse_float(s()?).ok_or_else(bad)?.to_be_bytes().to_vec(),
        JSONB => {
            let mut v = vec![1];
            v.extend_from_slice(text);
            v
        }
        UUID => {
            let hex: String = s()?.chars().filter(|c| *c != '-').collect();
            hex_bytes(&hex).filter(|b| b.len() == 16).ok_or_else(bad)?
        }
        BYTEA => s()?
            .strip_prefix("\\x")
            .and_then(hex_bytes)
            .ok_or_else(bad)?,
        DATE => {
            let days = match s()? {
                "infinity" => i32::MAX,
                "-infinity" => i32::MIN,
                t => {
                    let us = super::value::timestamp_us(&format!("{t} 00:00:00"), false)
                        .ok_or_else(bad)?;
                    ((us - PG_EPOCH_US) / 86_400_000_000) as i32
                }
            };
            days.to_be_bytes().to_vec()
        }
        TIMESTAMP | TIMESTAMPTZ => {
            let us = match s()? {
                "infinity" => i64::MAX,
                "-infinity" => i64::MIN,
                t => {
                    let us =
                        super::value::timestamp_us(t, type_oid == TIMESTAMPTZ).ok_or_else(bad)?;
                    i64::try_from(us - PG_EPOCH_US).map_err(|_| bad())?
                }
            };
            us.to_be_bytes().to_vec()
        }
        TIME => {
            let us = super::value::timestamp_us(&format!("1970-01-01 {}", s()?), false)
                .ok_or_else(bad)?;
            (us as i64).to_be_bytes().to_vec()
        }
        NUMERIC => numeric(&Numeric::parse(s()?).ok_or_else(bad)?),
        // Text-like types: the binary form is the text.
        _ => text.to_vec(),
    })
}

fn hex_bytes(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `numeric_send`: digit count, weight, sign, display scale, base-10000 digits.
fn numeric(n: &Numeric) -> Vec<u8> {
    let head = |nd: i16, weight: i16, sign: u16, dscale: i16| {
        let mut v = Vec::with_capacity(8 + nd as usize * 2);
        v.extend_from_slice(&nd.to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        v
    };
    let d: &Decimal = match n {
        Numeric::NaN => return head(0, 0, 0xC000, 0),
        Numeric::PosInf => return head(0, 0, 0xD000, 0),
        Numeric::NegInf => return head(0, 0, 0xF000, 0),
        Numeric::Finite(d) => d,
    };
    let text = d.to_string();
    let (neg, abs) = match text.strip_prefix('-') {
        Some(a) => (true, a),
        None => (false, text.as_str()),
    };
    let (int, frac) = abs.split_once('.').unwrap_or((abs, ""));
    let int = int.trim_start_matches('0');
    let int = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
    let frac = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
    let all = format!("{int}{frac}");
    let mut groups: Vec<i16> = all
        .as_bytes()
        .chunks(4)
        .map(|g| {
            std::str::from_utf8(g)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0)
        })
        .collect();
    let mut weight = (int.len() / 4) as i16 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        return head(0, 0, 0, d.scale as i16);
    }
    let mut v = head(
        groups.len() as i16,
        weight,
        if neg { 0x4000 } else { 0 },
        d.scale as i16,
    );
    for g in groups {
        v.extend_from_slice(&g.to_be_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_binary_matches_numeric_send() {
        // Expected bytes follow numeric_send's layout for these values.
        let n = |s: &str| numeric(&Numeric::parse(s).unwrap());
        assert_eq!(n("0"), vec![0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(n("0.00"), vec![0, 0, 0, 0, 0, 0, 0, 2]);
        // 12345.678 = 1|2345.6780, weight 1, dscale 3
        assert_eq!(
            n("12345.678"),
            vec![0, 3, 0, 1, 0, 0, 0, 3, 0, 1, 0x09, 0x29, 0x1A, 0x7C]
        );
        // -0.0001 = .0001, weight -1, negative
        assert_eq!(n("-0.0001"), vec![0, 1, 0xFF, 0xFF, 0x40, 0, 0, 4, 0, 1]);
        // 10000 = 1|0000: one digit, weight 1 (trailing zero group dropped)
        assert_eq!(n("10000"), vec![0, 1, 0, 1, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn dates_and_times_from_the_pg_epoch() {
        assert_eq!(
            encode(oid::DATE, b"2000-01-02").unwrap(),
            1i32.to_be_bytes().to_vec()
        );
        assert_eq!(
            encode(oid::TIMESTAMPTZ, b"2000-01-01 01:00:00+01").unwrap(),
            0i64.to_be_bytes().to_vec()
        );
        assert_eq!(
            encode(oid::TIMESTAMP, b"1999-12-31 23:59:59.5").unwrap(),
            (-500_000i64).to_be_bytes().to_vec()
        );
    }
}
