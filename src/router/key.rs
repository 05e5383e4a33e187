//! Shard key types and values, parsed from SQL literals or configuration the way
//! PostgreSQL's input functions would read them.

use serde::Deserialize;

/// The types a shard key column may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyType {
    Int2,
    Int4,
    Int8,
    Text,
    Uuid,
}

impl KeyType {
    pub fn pg_name(self) -> &'static str {
        match self {
            KeyType::Int2 => "smallint",
            KeyType::Int4 => "integer",
            KeyType::Int8 => "bigint",
            KeyType::Text => "text",
            KeyType::Uuid => "uuid",
        }
    }
}

/// A shard key value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum KeyValue {
    Int(i64),
    Text(String),
    Uuid([u8; 16]),
}

/// Why a literal is not a valid key of its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyError {
    /// 22P02, PostgreSQL's "invalid input syntax".
    Invalid(String),
    /// 22003, out of range for the integer type.
    OutOfRange(String),
}

impl std::fmt::Display for KeyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyError::Invalid(m) | KeyError::OutOfRange(m) => f.write_str(m),
        }
    }
}

impl KeyValue {
    /// Parses the text form of a key, as the type's input function would.
    pub fn parse(ty: KeyType, s: &str) -> Result<KeyValue, String> {
        Self::parse_typed(ty, s).map_err(|e| e.to_string())
    }

    pub fn parse_typed(ty: KeyType, s: &str) -> Result<KeyValue, KeyError> {
        let invalid = || {
            KeyError::Invalid(format!(
                "invalid input syntax for type {}: \"{s}\"",
                ty.pg_name()
            ))
        };
        match ty {
            KeyType::Int2 | KeyType::Int4 | KeyType::Int8 => {
                let t = s.trim_matches(|c: char| c.is_ascii_whitespace());
                let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
                if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(invalid());
                }
                let v: i64 = t.parse().map_err(|_| {
                    KeyError::OutOfRange(format!(
                        "value \"{s}\" is out of range for type {}",
                        ty.pg_name()
                    ))
                })?;
                let ok = match ty {
                    KeyType::Int2 => i16::try_from(v).is_ok(),
                    KeyType::Int4 => i32::try_from(v).is_ok(),
                    _ => true,
                };
                if !ok {
                    return Err(KeyError::OutOfRange(format!(
                        "value \"{s}\" is out of range for type {}",
                        ty.pg_name()
                    )));
                }
                Ok(KeyValue::Int(v))
            }
            KeyType::Text => Ok(KeyValue::Text(s.to_string())),
            KeyType::Uuid => {
                let t = s.trim();
                let t = t
                    .strip_prefix('{')
                    .and_then(|x| x.strip_suffix('}'))
                    .unwrap_or(t);
                let hex: Vec<u8> = t.bytes().filter(|&c| c != b'-').collect();
                if hex.len() != 32 || t.starts_with('-') || t.ends_with('-') || t.contains("--") {
                    return Err(invalid());
                }
                let mut out = [0u8; 16];
                for (i, pair) in hex.chunks(2).enumerate() {
                    let hi = (pair[0] as char).to_digit(16).ok_or_else(invalid)?;
                    let lo = (pair[1] as char).to_digit(16).ok_or_else(invalid)?;
                    out[i] = (hi * 16 + lo) as u8;
                }
                Ok(KeyValue::Uuid(out))
            }
        }
    }
}

impl std::fmt::Display for KeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyValue::Int(v) => write!(f, "{v}"),
            KeyValue::Text(s) => write!(f, "{s}"),
            KeyValue::Uuid(u) => {
                for (i, b) in u.iter().enumerate() {
                    if matches!(i, 4 | 6 | 8 | 10) {
                        f.write_str("-")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}
