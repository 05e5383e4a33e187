//! Reading the extended-protocol messages a client sends, turning bound
//! values into what the router reads, and relaying a server's answer to one
//! message.

use crate::protocol::take_cstr;

use crate::router::Bound;

pub(super) fn read_i16(b: &[u8]) -> Option<(i16, &[u8])> {
    Some((i16::from_be_bytes([*b.first()?, *b.get(1)?]), b.get(2..)?))
}

pub(super) fn read_i32(b: &[u8]) -> Option<(i32, &[u8])> {
    let v = b.get(..4)?;
    Some((i32::from_be_bytes([v[0], v[1], v[2], v[3]]), b.get(4..)?))
}

/// A Parse message: statement name, text, declared parameter types.
pub(crate) fn parse_parse(body: &[u8]) -> Option<(&str, &str, Vec<u32>)> {
    let (name, r) = take_cstr(body)?;
    let (sql, r) = take_cstr(r)?;
    let (n, mut r) = read_i16(r)?;
    let mut types = Vec::new();
    for _ in 0..n.max(0) {
        let (t, next) = read_i32(r)?;
        types.push(t as u32);
        r = next;
    }
    Some((name, sql, types))
}

pub(crate) struct BindMsg<'a> {
    pub portal: &'a str,
    pub stmt: &'a str,
    /// Everything after the two names, forwarded as is.
    pub rest: &'a [u8],
    pub formats: Vec<i16>,
    pub values: Vec<Option<&'a [u8]>>,
    /// The result-format part, after the parameters.
    pub results: &'a [u8],
}

impl BindMsg<'_> {
    /// The part after the names for a Bind of only the parameters `keep`
    /// (indexes into this one's), in that order, with `results` as the
    /// result-format part.
    pub(super) fn subset(&self, keep: &[usize], results: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let fmts: Vec<i16> = match self.formats.as_slice() {
            [] | [_] => self.formats.clone(),
            many => keep
                .iter()
                .map(|&i| many.get(i).copied().unwrap_or(0))
                .collect(),
        };
        out.extend_from_slice(&(fmts.len() as i16).to_be_bytes());
        for f in fmts {
            out.extend_from_slice(&f.to_be_bytes());
        }
        out.extend_from_slice(&(keep.len() as i16).to_be_bytes());
        for &i in keep {
            match self.values.get(i).copied().flatten() {
                Some(v) => {
                    out.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        out.extend_from_slice(results);
        out
    }
}

/// The result format codes at the end of a Bind.
pub(crate) fn result_formats(results: &[u8]) -> Option<Vec<i16>> {
    let (n, mut r) = read_i16(results)?;
    let mut out = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n.max(0) {
        let (f, next) = read_i16(r)?;
        out.push(f);
        r = next;
    }
    Some(out)
}

pub(crate) fn parse_bind(body: &[u8]) -> Option<BindMsg<'_>> {
    let (portal, r) = take_cstr(body)?;
    let (stmt, rest) = take_cstr(r)?;
    let (nf, mut r) = read_i16(rest)?;
    let mut formats = Vec::new();
    for _ in 0..nf.max(0) {
        let (f, next) = read_i16(r)?;
        formats.push(f);
        r = next;
    }
    let (np, mut r) = read_i16(r)?;
    let mut values = Vec::new();
    for _ in 0..np.max(0) {
        let (len, next) = read_i32(r)?;
        if len < 0 {
            values.push(None);
            r = next;
        } else {
            values.push(Some(next.get(..len as usize)?));
            r = next.get(len as usize..)?;
        }
    }
    Some(BindMsg {
        portal,
        stmt,
        rest,
        formats,
        values,
        results: r,
    })
}

/// The router's view of one bound value.
fn bound(format: i16, value: Option<&[u8]>, oid: u32) -> Bound {
    let Some(v) = value else { return Bound::Null };
    let text = |v: &[u8]| {
        std::str::from_utf8(v)
            .map(|s| Bound::Text(s.to_string()))
            .unwrap_or(Bound::Unknown)
    };
    if format == 0 {
        return text(v);
    }
    match (oid, v.len()) {
        (21, 2) => Bound::Text(i16::from_be_bytes([v[0], v[1]]).to_string()),
        (23, 4) => Bound::Text(i32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
        (20, 8) => Bound::Text(i64::from_be_bytes(v.try_into().unwrap_or([0; 8])).to_string()),
        // text, varchar, name, bpchar: binary is the text itself
        (25 | 1043 | 19 | 1042, _) => text(v),
        (2950, 16) => {
            Bound::Text(crate::router::KeyValue::Uuid(v.try_into().unwrap_or([0; 16])).to_string())
        }
        _ => Bound::Unknown,
    }
}

pub(crate) fn bounds(b: &BindMsg, types: &[u32]) -> Vec<Bound> {
    b.values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let fmt = match b.formats.as_slice() {
                [] => 0,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(0),
            };
            bound(fmt, *v, types.get(i).copied().unwrap_or(0))
        })
        .collect()
}
