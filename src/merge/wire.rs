//! The row messages of a merge: shards' `RowDescription`s and `DataRow`s
//! read, and the client's written in the formats it asked for.

use bytes::{BufMut, Bytes};

use crate::error::SqlState;
use crate::protocol::{self, message, Frame, Severity};

/// One column of a `RowDescription`.
#[derive(Debug, Clone)]
pub(super) struct Field {
    pub(super) name: Vec<u8>,
    pub(super) table: i32,
    pub(super) attnum: i16,
    pub(super) type_oid: u32,
    pub(super) typlen: i16,
    pub(super) typmod: i32,
    pub(super) format: i16,
}

pub(super) fn parse_description(body: &[u8]) -> Option<Vec<Field>> {
    let n = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let end = at + body.get(at..)?.iter().position(|&b| b == 0)?;
        let name = body[at..end].to_vec();
        let f = body.get(end + 1..end + 19)?;
        out.push(Field {
            name,
            table: i32::from_be_bytes(f[0..4].try_into().ok()?),
            attnum: i16::from_be_bytes(f[4..6].try_into().ok()?),
            type_oid: u32::from_be_bytes(f[6..10].try_into().ok()?),
            typlen: i16::from_be_bytes(f[10..12].try_into().ok()?),
            typmod: i32::from_be_bytes(f[12..16].try_into().ok()?),
            format: i16::from_be_bytes(f[16..18].try_into().ok()?),
        });
        at = end + 19;
    }
    Some(out)
}

fn description(fields: &[Field]) -> Bytes {
    use pgwire::messages::data::{FieldDescription, RowDescription};
    let named: Option<Vec<FieldDescription>> = fields
        .iter()
        .map(|f| {
            Some(FieldDescription::new(
                String::from_utf8(f.name.clone()).ok()?,
                f.table,
                f.attnum,
                f.type_oid,
                f.typlen,
                f.typmod,
                f.format,
            ))
        })
        .collect();
    if let Some(named) = named {
        return protocol::encode(&RowDescription::new(named));
    }
    // pgwire's field names are Rust strings; a name in a client encoding
    // other than UTF-8 (LATIN1, say) is written as the shard sent it.
    message(b'T', |b| {
        b.put_i16(fields.len() as i16);
        for f in fields {
            b.put_slice(&f.name);
            b.put_u8(0);
            b.put_i32(f.table);
            b.put_i16(f.attnum);
            b.put_u32(f.type_oid);
            b.put_i16(f.typlen);
            b.put_i32(f.typmod);
            b.put_i16(f.format);
        }
    })
}

pub(super) type Row = Vec<Option<Bytes>>;

/// Writes the client's columns in the formats it asked for.
pub(super) struct Writer {
    /// Per column: the type to encode in binary, or `None` for text.
    binary: Vec<Option<u32>>,
}

impl Writer {
    /// The client's RowDescription and its writer; refuses binary output of
    /// types the proxy cannot encode.
    pub(super) fn new(fields: &[Field], formats: &[i16]) -> Result<(Bytes, Writer), Bytes> {
        let mut out = fields.to_vec();
        let mut binary = Vec::with_capacity(fields.len());
        for (i, f) in out.iter_mut().enumerate() {
            let fmt = match formats {
                [] => 0,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(0),
            };
            f.format = fmt;
            if fmt == 1 {
                if !super::binary::encodable(f.type_oid) {
                    return Err(merge_error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        &format!(
                            "binary results of type OID {} from a cross-shard merge are not supported; ask for text",
                            f.type_oid
                        ),
                    ));
                }
                binary.push(Some(f.type_oid));
            } else {
                binary.push(None);
            }
        }
        Ok((description(&out), Writer { binary }))
    }

    pub(super) fn text(&self) -> bool {
        self.binary.iter().all(Option::is_none)
    }

    pub(super) fn row(&self, row: &[Option<Bytes>]) -> Result<Bytes, Bytes> {
        if self.text() {
            return Ok(data_row(row));
        }
        let mut cols = Vec::with_capacity(row.len());
        for (v, b) in row.iter().zip(&self.binary) {
            cols.push(match (v, b) {
                (Some(v), Some(t)) => {
                    Some(Bytes::from(super::binary::encode(*t, v).map_err(|e| {
                        merge_error(SqlState::INVALID_TEXT_REPRESENTATION, &e)
                    })?))
                }
                (v, _) => v.clone(),
            });
        }
        Ok(data_row(&cols))
    }
}

/// The columns of a `DataRow`, sharing the frame's buffer.
pub(super) fn parse_row(f: &Frame) -> Option<Row> {
    let body = f.body();
    let n = i16::from_be_bytes(body.get(..2)?.try_into().ok()?);
    let mut at = 2;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
        at += 4;
        if len < 0 {
            out.push(None);
        } else {
            let end = at + len as usize;
            body.get(at..end)?;
            out.push(Some(f.bytes.slice(5 + at..5 + end)));
            at = end;
        }
    }
    Some(out)
}

fn data_row(cols: &[Option<Bytes>]) -> Bytes {
    let mut data = bytes::BytesMut::with_capacity(
        cols.iter()
            .map(|c| 4 + c.as_ref().map_or(0, |v| v.len()))
            .sum(),
    );
    for c in cols {
        match c {
            Some(v) => {
                data.put_i32(v.len() as i32);
                data.put_slice(v);
            }
            None => data.put_i32(-1),
        }
    }
    protocol::encode(&pgwire::messages::data::DataRow::new(
        data,
        cols.len() as i16,
    ))
}

/// An error the merge itself raises, as the client will see it.
pub(super) fn merge_error(code: SqlState, msg: &str) -> Bytes {
    protocol::error_response(Severity::Error, code, msg, None)
}
