//! The encoding of a COPY's data (its `ENCODING` option, else the session's
//! `client_encoding`), as far as the row reader needs it: which bytes can
//! hide inside a multibyte character, and the key's text in UTF-8 (the
//! shards' encoding) so that it hashes as the shard will store it.
//!
//! Conversion is exact or not attempted: UTF8 and SQL_ASCII need none,
//! LATIN1 maps each byte to the code point of its value, and WIN1252 has a
//! 32-entry table (Microsoft's, as PostgreSQL's conversion uses it). Any
//! other encoding's text is taken only when it is ASCII, which every
//! encoding PostgreSQL knows writes as ASCII; for the rest the caller
//! decides (a text key is refused, anything else is left to a shard).
//! Names are matched as PostgreSQL does (`pg_char_to_encoding`: letters and
//! digits only, any case); a name it does not know never reaches a row, as
//! every shard refuses the COPY first.

use std::borrow::Cow;

/// How a COPY's data is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataEncoding {
    /// UTF8, or SQL_ASCII (whose bytes a UTF8 database checks as UTF-8).
    Utf8,
    Latin1,
    Win1252,
    /// Any other server encoding: a byte below 0x80 is always ASCII.
    AsciiSafe,
    /// A client-only encoding whose second bytes can look like ASCII
    /// (`\`, `|`, ...): PostgreSQL skips whole characters while it looks
    /// for line ends, and so must the proxy.
    EmbedsAscii(Multibyte),
}

/// The client-only encodings, by how their first byte gives the length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Multibyte {
    /// SJIS, SHIFT_JIS_2004: half-width katakana (0xA1..0xDF) are one byte.
    ShiftJis,
    /// BIG5, GBK, UHC, GB18030 (whose four-byte characters are read as
    /// two pairs: their second and fourth bytes are digits).
    TwoByte,
    /// JOHAB, with EUC's lengths.
    Johab,
}

/// Why a key's text cannot be had in UTF-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unconvertible {
    /// A byte with no character in this encoding: PostgreSQL refuses the row.
    NoCharacter,
    /// Non-ASCII text of an encoding the proxy does not convert.
    NotConverted,
}

impl DataEncoding {
    /// The encoding a name stands for, as PostgreSQL reads it.
    pub fn named(name: &str) -> DataEncoding {
        let clean: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        match clean.as_str() {
            "utf8" | "unicode" | "sqlascii" => DataEncoding::Utf8,
            "latin1" | "iso88591" => DataEncoding::Latin1,
            "win1252" | "windows1252" => DataEncoding::Win1252,
            "sjis" | "mskanji" | "shiftjis" | "win932" | "windows932" | "shiftjis2004" => {
                DataEncoding::EmbedsAscii(Multibyte::ShiftJis)
            }
            "big5" | "win950" | "windows950" | "gbk" | "win936" | "windows936" | "uhc"
            | "win949" | "windows949" | "gb18030" => DataEncoding::EmbedsAscii(Multibyte::TwoByte),
            "johab" => DataEncoding::EmbedsAscii(Multibyte::Johab),
            _ => DataEncoding::AsciiSafe,
        }
    }

    /// How many bytes the character starting with `lead` takes, where that
    /// matters (client-only encodings); 1 otherwise.
    pub fn char_len(self, lead: u8) -> usize {
        let DataEncoding::EmbedsAscii(m) = self else {
            return 1;
        };
        if lead < 0x80 {
            return 1;
        }
        match m {
            Multibyte::ShiftJis if (0xa1..=0xdf).contains(&lead) => 1,
            Multibyte::Johab if lead == 0x8f => 3,
            _ => 2,
        }
    }

    /// `raw` in UTF-8, as the shard will hold it.
    pub fn to_utf8(self, raw: &[u8]) -> Result<Cow<'_, [u8]>, Unconvertible> {
        if self == DataEncoding::Utf8 || raw.is_ascii() {
            return Ok(Cow::Borrowed(raw));
        }
        let table: fn(u8) -> Option<char> = match self {
            DataEncoding::Latin1 => |b| Some(char::from(b)),
            DataEncoding::Win1252 => win1252,
            _ => return Err(Unconvertible::NotConverted),
        };
        let mut s = String::with_capacity(raw.len() + raw.len() / 2);
        for &b in raw {
            s.push(table(b).ok_or(Unconvertible::NoCharacter)?);
        }
        Ok(Cow::Owned(s.into_bytes()))
    }
}

/// WIN1252: 0x80..0x9F hold punctuation and letters (five have none); the
/// rest are LATIN1's.
fn win1252(b: u8) -> Option<char> {
    const HIGH: [u16; 32] = [
        0x20ac, 0, 0x201a, 0x0192, 0x201e, 0x2026, 0x2020, 0x2021, 0x02c6, 0x2030, 0x0160, 0x2039,
        0x0152, 0, 0x017d, 0, 0, 0x2018, 0x2019, 0x201c, 0x201d, 0x2022, 0x2013, 0x2014, 0x02dc,
        0x2122, 0x0161, 0x203a, 0x0153, 0, 0x017e, 0x0178,
    ];
    match b {
        0x80..=0x9f => match HIGH[usize::from(b - 0x80)] {
            0 => None,
            cp => char::from_u32(u32::from(cp)),
        },
        _ => Some(char::from(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_postgresql_reads_them() {
        assert_eq!(DataEncoding::named("UTF-8"), DataEncoding::Utf8);
        assert_eq!(DataEncoding::named("SQL_ASCII"), DataEncoding::Utf8);
        assert_eq!(DataEncoding::named("ISO-8859-1"), DataEncoding::Latin1);
        assert_eq!(DataEncoding::named("Windows-1252"), DataEncoding::Win1252);
        assert_eq!(DataEncoding::named("LATIN2"), DataEncoding::AsciiSafe);
        assert_eq!(DataEncoding::named("euc_jp"), DataEncoding::AsciiSafe);
        assert_eq!(
            DataEncoding::named("Shift_JIS"),
            DataEncoding::EmbedsAscii(Multibyte::ShiftJis)
        );
        assert_eq!(
            DataEncoding::named("GB18030"),
            DataEncoding::EmbedsAscii(Multibyte::TwoByte)
        );
    }

    #[test]
    fn conversions_are_exact_or_refused() {
        let l = DataEncoding::Latin1;
        assert_eq!(l.to_utf8(b"jos\xe9").unwrap().as_ref(), "josé".as_bytes());
        assert_eq!(l.to_utf8(b"\x80").unwrap().as_ref(), "\u{80}".as_bytes());
        let w = DataEncoding::Win1252;
        assert_eq!(
            w.to_utf8(b"\x80\x9f\xe9").unwrap().as_ref(),
            "€Ÿé".as_bytes()
        );
        assert_eq!(w.to_utf8(b"a\x81"), Err(Unconvertible::NoCharacter));
        let s = DataEncoding::named("SJIS");
        assert_eq!(s.to_utf8(b"plain").unwrap().as_ref(), b"plain");
        assert_eq!(s.to_utf8(b"\x95\x5c"), Err(Unconvertible::NotConverted));
        assert_eq!(s.char_len(0x95), 2);
        assert_eq!(s.char_len(0xb1), 1);
        assert_eq!(DataEncoding::named("JOHAB").char_len(0x8f), 3);
        assert_eq!(DataEncoding::Latin1.char_len(0x95), 1);
    }
}
