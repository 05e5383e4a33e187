//! PostgreSQL v3 message framing shared by the client and server sides.
//!
//! A [`Frame`] is one whole message, tag and length included, so that what a
//! server sent can be relayed to a client byte for byte without re-encoding.

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::SqlState;
use pgwire::messages as pg;

/// One protocol message: `bytes` holds the tag, the length and the body.
#[derive(Debug, Clone)]
pub struct Frame {
    pub tag: u8,
    pub bytes: Bytes,
}

impl Frame {
    pub fn body(&self) -> &[u8] {
        self.bytes.get(5..).unwrap_or(&[])
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("invalid message length {0}")]
    BadLength(i64),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one tagged message. The claimed length is checked against `max`
/// before anything of that size is allocated.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, max: usize) -> Result<Frame, FrameError> {
    let mut head = [0u8; 5];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len < 4 || len as usize > max {
        return Err(FrameError::BadLength(len as i64));
    }
    let mut buf = BytesMut::with_capacity(len as usize + 1);
    buf.extend_from_slice(&head);
    buf.resize(len as usize + 1, 0);
    r.read_exact(&mut buf[5..]).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            FrameError::Closed
        } else {
            FrameError::Io(e)
        }
    })?;
    Ok(Frame {
        tag: head[0],
        bytes: buf.freeze(),
    })
}

/// Reads frames out of one growing buffer: each frame is a view of the bytes
/// read (no allocation or copy per message); the buffer's space is reused
/// once the frames handed out are dropped.
pub struct FrameReader<R> {
    inner: R,
    buf: BytesMut,
    /// [`FrameReader::read_ready`] saw the end of the stream (or an error):
    /// the next read past the buffer reports it at once.
    ended: bool,
}

/// What [`FrameReader::read_ready`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrived {
    /// Nothing new can be read now.
    Nothing,
    /// Bytes, now buffered.
    Data,
    /// The peer closed the stream, or it failed.
    Closed,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> FrameReader<R> {
        FrameReader {
            inner,
            buf: BytesMut::with_capacity(32 * 1024),
            ended: false,
        }
    }

    /// Takes in whatever the peer has sent already, without waiting (one
    /// poll, whose wake-up nobody waits for). Under TLS this is the only
    /// exact test: bytes on the socket may be no more than a TLS record
    /// that decrypts to nothing.
    pub fn read_ready(&mut self) -> Arrived {
        use futures_util::FutureExt;
        if self.ended {
            return Arrived::Closed;
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(32 * 1024);
        }
        match self.inner.read_buf(&mut self.buf).now_or_never() {
            None => Arrived::Nothing,
            Some(Ok(0)) | Some(Err(_)) => {
                self.ended = true;
                Arrived::Closed
            }
            Some(Ok(_)) => Arrived::Data,
        }
    }

    /// Bytes read but not yet handed out as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The tag and whole length of the frame buffered at byte `at`, if all
    /// of it is there (not handed out: [`FrameReader::next`] still will).
    pub fn peek_at(&self, at: usize) -> Option<(u8, usize)> {
        let head = self.buf.get(at..at + 5)?;
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]);
        let total = usize::try_from(len).ok().filter(|l| *l >= 4)? + 1;
        (self.buf.len() >= at + total).then_some((head[0], total))
    }

    /// Waits for more bytes and buffers them; `false` at the end of the
    /// stream or on an error (the next [`FrameReader::next`] reports it).
    pub async fn fill(&mut self) -> bool {
        if self.ended {
            return false;
        }
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(32 * 1024);
        }
        match self.inner.read_buf(&mut self.buf).await {
            Ok(n) if n > 0 => true,
            _ => {
                self.ended = true;
                false
            }
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// The next message. The claimed length is checked against `max` before
    /// room for it is made.
    pub async fn next(&mut self, max: usize) -> Result<Frame, FrameError> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                if len < 4 || len as usize > max {
                    return Err(FrameError::BadLength(len as i64));
                }
                let total = len as usize + 1;
                if self.buf.len() >= total {
                    let bytes = self.buf.split_to(total).freeze();
                    return Ok(Frame {
                        tag: bytes[0],
                        bytes,
                    });
                }
                self.buf.reserve(total - self.buf.len());
            }
            if self.ended {
                return Err(FrameError::Closed);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(32 * 1024);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Err(FrameError::Closed);
            }
        }
    }
}

/// Builds a tagged message from a body writer.
/// A Flush message: the server sends what it has without waiting for Sync.
pub const FLUSH: [u8; 5] = [b'H', 0, 0, 0, 4];

pub fn message(tag: u8, body: impl FnOnce(&mut BytesMut)) -> Bytes {
    let mut buf = BytesMut::with_capacity(64);
    buf.put_u8(tag);
    buf.put_i32(0);
    body(&mut buf);
    let len = (buf.len() - 1) as i32;
    buf[1..5].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

pub fn put_cstr(buf: &mut BytesMut, s: &str) {
    buf.put_slice(s.as_bytes());
    buf.put_u8(0);
}

/// Encodes one of pgwire's message types: tag, length, body. Used for every
/// message the proxy writes to a client itself.
///
/// `Message::encode`'s length limits protect a decoder; what the proxy
/// writes may be longer (a `ParameterStatus` of a long `search_path`), so
/// the frame is made here around pgwire's body encoder.
pub fn encode<M: pgwire::messages::Message>(m: &M) -> Bytes {
    let len = m.message_length();
    let mut buf = BytesMut::with_capacity(len + 1);
    if let Some(tag) = M::message_type() {
        buf.put_u8(tag);
    }
    buf.put_i32(len as i32);
    // The body encoders of the messages used here cannot fail.
    let encoded = m.encode_body(&mut buf);
    debug_assert!(encoded.is_ok(), "{encoded:?}");
    buf.freeze()
}

/// Severity of a proxy-made error or notice.
#[derive(Debug, Clone, Copy)]
pub enum Severity {
    Error,
    Fatal,
    Warning,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Warning => "WARNING",
        }
    }
}

/// An `ErrorResponse` (or `NoticeResponse` for warnings) from its fields.
fn error_or_notice(severity: Severity, fields: Vec<(u8, String)>) -> Bytes {
    match severity {
        Severity::Warning => encode(&pg::response::NoticeResponse::new(fields)),
        Severity::Error | Severity::Fatal => encode(&pg::response::ErrorResponse::new(fields)),
    }
}

/// The fields every proxy-made error starts with.
fn head_fields(severity: Severity, code: SqlState, msg: &str) -> Vec<(u8, String)> {
    vec![
        (b'S', severity.as_str().to_string()),
        (b'V', severity.as_str().to_string()),
        (b'C', code.code().to_string()),
        (b'M', msg.to_string()),
    ]
}

/// An `ErrorResponse` (or `NoticeResponse` for warnings) made by the proxy itself.
pub fn error_response(
    severity: Severity,
    code: SqlState,
    msg: &str,
    detail: Option<&str>,
) -> Bytes {
    let mut fields = head_fields(severity, code, msg);
    if let Some(d) = detail {
        fields.push((b'D', d.to_string()));
    }
    error_or_notice(severity, fields)
}

/// [`error_response`] with a hint line.
pub fn error_response_with_hint(
    severity: Severity,
    code: SqlState,
    msg: &str,
    detail: Option<&str>,
    hint: &str,
) -> Bytes {
    let mut fields = head_fields(severity, code, msg);
    if let Some(d) = detail {
        fields.push((b'D', d.to_string()));
    }
    fields.push((b'H', hint.to_string()));
    error_or_notice(severity, fields)
}

/// ReadyForQuery, encoded once per status (one is sent per statement).
pub fn ready_for_query(status: u8) -> &'static [u8] {
    use pg::response::{ReadyForQuery, TransactionStatus};
    static READY: std::sync::LazyLock<[Bytes; 3]> = std::sync::LazyLock::new(|| {
        [
            TransactionStatus::Idle,
            TransactionStatus::Transaction,
            TransactionStatus::Error,
        ]
        .map(|s| encode(&ReadyForQuery::new(s)))
    });
    match status {
        b'T' => &READY[1],
        b'E' => &READY[2],
        _ => &READY[0],
    }
}

/// An `ErrorResponse` with PostgreSQL's CONTEXT field (`W`), for errors the
/// proxy finds in a client's COPY data.
pub fn error_with_context(code: SqlState, msg: &str, context: &str) -> Bytes {
    error_with_hint(code, msg, None, context)
}

/// An `ErrorResponse` with a HINT (when there is one) and a CONTEXT line.
pub fn error_with_hint(code: SqlState, msg: &str, hint: Option<&str>, context: &str) -> Bytes {
    let mut fields = head_fields(Severity::Error, code, msg);
    if let Some(h) = hint {
        fields.push((b'H', h.to_string()));
    }
    fields.push((b'W', context.to_string()));
    error_or_notice(Severity::Error, fields)
}

/// An `ErrorResponse` with its CONTEXT field passed through `f` (the other
/// fields unchanged); `None` when `bytes` is not a well-formed one.
pub fn map_error_context(bytes: &[u8], f: impl Fn(&str) -> Option<String>) -> Option<Bytes> {
    let changed = std::cell::Cell::new(false);
    let mapped = rewrite_error(bytes, |code, value| match (code, f(value)) {
        (b'W', Some(v)) => {
            changed.set(true);
            Some(v)
        }
        _ => Some(value.to_string()),
    })?;
    changed.get().then_some(mapped)
}

/// An `ErrorResponse` with every field passed through `f` (given its code
/// and value; `None` drops the field); `None` when `bytes` is not a
/// well-formed one.
///
/// Read here, not with pgwire's decoder: that one panics on a body without
/// its final NUL and replaces bytes that are not UTF-8, and this reads what
/// a shard sent.
pub fn rewrite_error(bytes: &[u8], f: impl Fn(u8, &str) -> Option<String>) -> Option<Bytes> {
    let body = bytes.get(5..)?;
    let mut fields = Vec::new();
    let mut rest = body;
    while let Some((&code, after)) = rest.split_first() {
        if code == 0 {
            break;
        }
        let (value, next) = take_cstr(after)?;
        if let Some(v) = f(code, value) {
            fields.push((code, v));
        }
        rest = next;
    }
    Some(encode(&pg::response::ErrorResponse::new(fields)))
}

pub fn command_complete(tag: &str) -> Bytes {
    // The block-control tags, one or two per transaction, encoded once.
    const FIXED: [&str; 6] = [
        "BEGIN",
        "COMMIT",
        "ROLLBACK",
        "START TRANSACTION",
        "SAVEPOINT",
        "RELEASE",
    ];
    static ENCODED: std::sync::LazyLock<[Bytes; 6]> = std::sync::LazyLock::new(|| {
        FIXED.map(|t| encode(&pg::response::CommandComplete::new(t.to_string())))
    });
    match FIXED.iter().position(|t| *t == tag) {
        Some(i) => ENCODED[i].clone(),
        None => encode(&pg::response::CommandComplete::new(tag.to_string())),
    }
}

pub fn empty_query_response() -> Bytes {
    encode(&pg::response::EmptyQueryResponse::new())
}

pub fn parameter_status(name: &str, value: &str) -> Bytes {
    encode(&pg::startup::ParameterStatus::new(
        name.to_string(),
        value.to_string(),
    ))
}

pub fn backend_key_data(pid: i32, secret: i32) -> Bytes {
    encode(&pg::startup::BackendKeyData::new(
        pid,
        pg::startup::SecretKey::I32(secret),
    ))
}

pub fn parse_complete() -> Bytes {
    encode(&pg::extendedquery::ParseComplete::new())
}

pub fn bind_complete() -> Bytes {
    encode(&pg::extendedquery::BindComplete::new())
}

pub fn close_complete() -> Bytes {
    encode(&pg::extendedquery::CloseComplete::new())
}

pub fn portal_suspended() -> Bytes {
    encode(&pg::extendedquery::PortalSuspended::new())
}

pub fn no_data() -> Bytes {
    encode(&pg::data::NoData::new())
}

pub fn parameter_description(types: &[u32]) -> Bytes {
    encode(&pg::data::ParameterDescription::new(types.to_vec()))
}

/// NegotiateProtocolVersion: the newest version the proxy speaks, whole
/// (major in the high 16 bits, 196608 for 3.0, as PostgreSQL sends it),
/// and the startup options it does not know.
pub fn negotiate_protocol_version(version: i32, unknown: &[String]) -> Bytes {
    encode(&pg::startup::NegotiateProtocolVersion::new(
        version,
        unknown.to_vec(),
    ))
}

/// An `Authentication*` message.
pub fn authentication(m: pg::startup::Authentication) -> Bytes {
    encode(&m)
}

/// Reads a NUL-terminated string at the front of `buf`, returning it and the rest.
pub fn take_cstr(buf: &[u8]) -> Option<(&str, &[u8])> {
    let end = buf.iter().position(|&c| c == 0)?;
    let s = std::str::from_utf8(buf.get(..end)?).ok()?;
    Some((s, buf.get(end + 1..)?))
}

/// The fields of an `ErrorResponse`/`NoticeResponse` the proxy looks at.
#[derive(Debug, Clone, Default)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
}

impl ErrorFields {
    pub fn parse(body: &[u8]) -> ErrorFields {
        let mut out = ErrorFields::default();
        let mut rest = body;
        while let Some((&kind, after)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let Some((value, next)) = take_cstr(after) else {
                break;
            };
            match kind {
                b'S' => out.severity = value.to_string(),
                b'C' => out.code = value.to_string(),
                b'M' => out.message = value.to_string(),
                _ => {}
            }
            rest = next;
        }
        out
    }
}

impl std::fmt::Display for ErrorFields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} ({})", self.severity, self.message, self.code)
    }
}

/// FNV-1a, 64-bit: stable names and keys the proxy derives from text
/// (server-side statement names, the node's advisory-lock key), so no
/// client- or config-supplied text is pasted into SQL.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    fnv1a_from(0xcbf2_9ce4_8422_2325, bytes)
}

/// FNV-1a continued from the state `h` of the bytes before these.
pub fn fnv1a_from(h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes
        .into_iter()
        .fold(h, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A command tag split into the verb and the row count PostgreSQL reports,
/// so tags from several shards can be summed (`INSERT 0 n`, `UPDATE n`, ...).
pub fn tag_rows(tag: &str) -> Option<(&str, u64)> {
    let (verb, count) = tag.rsplit_once(' ')?;
    let n = count.parse().ok()?;
    match verb {
        "INSERT 0" | "UPDATE" | "DELETE" | "SELECT" | "MERGE" | "COPY" | "FETCH" | "MOVE" => {
            Some((verb, n))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frame_round_trip_and_length_limit() {
        let msg = command_complete("SELECT 3");
        let mut r = &msg[..];
        let f = read_frame(&mut r, 1024).await.unwrap();
        assert_eq!(f.tag, b'C');
        assert_eq!(take_cstr(f.body()).unwrap().0, "SELECT 3");

        let huge = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        let mut r = &huge[..];
        assert!(matches!(
            read_frame(&mut r, 1 << 20).await,
            Err(FrameError::BadLength(_))
        ));
        let short = [b'Q', 0, 0, 0, 2];
        let mut r = &short[..];
        assert!(matches!(
            read_frame(&mut r, 1 << 20).await,
            Err(FrameError::BadLength(2))
        ));
    }

    /// The messages the proxy makes with pgwire are byte for byte what
    /// PostgreSQL sends (the layouts of the protocol documentation).
    #[test]
    fn pgwire_messages_are_postgres_bytes() {
        assert_eq!(ready_for_query(b'I'), b"Z\0\0\0\x05I");
        assert_eq!(ready_for_query(b'T'), b"Z\0\0\0\x05T");
        assert_eq!(ready_for_query(b'E'), b"Z\0\0\0\x05E");
        assert_eq!(&command_complete("SELECT 1")[..], b"C\0\0\0\x0dSELECT 1\0");
        assert_eq!(
            &error_response(Severity::Error, SqlState::FEATURE_NOT_SUPPORTED, "no", None)[..],
            b"E\0\0\0\x1eSERROR\0VERROR\0C0A000\0Mno\0\0"
        );
        assert_eq!(&parse_complete()[..], b"1\0\0\0\x04");
        assert_eq!(&bind_complete()[..], b"2\0\0\0\x04");
        assert_eq!(&no_data()[..], b"n\0\0\0\x04");
        assert_eq!(
            &parameter_description(&[23])[..],
            b"t\0\0\0\x0a\0\x01\0\0\0\x17"
        );
        use pg::startup::Authentication as A;
        assert_eq!(&authentication(A::Ok)[..], b"R\0\0\0\x08\0\0\0\0");
        assert_eq!(
            &authentication(A::SASL(vec!["SCRAM-SHA-256".into()]))[..],
            b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0"
        );
        assert_eq!(
            &negotiate_protocol_version(196608, &["_pq_.x".into()])[..],
            b"v\0\0\0\x13\0\x03\0\0\0\0\0\x01_pq_.x\0"
        );
        // A long ParameterStatus (pgwire's decoder limit is 30,000 bytes).
        let long = "x".repeat(40_000);
        assert_eq!(
            parameter_status("search_path", &long).len(),
            1 + 4 + 12 + 40_001
        );
    }

    /// Why the messages of the query phase are still read by hand: pgwire's
    /// decoders turn bytes that are not UTF-8 into U+FFFD (a LATIN1
    /// client's query would reach the shard changed) and panic on a
    /// truncated Bind, where PostgreSQL answers 08P01.
    #[test]
    fn pgwire_query_phase_decoders_cannot_serve_a_proxy() {
        use pgwire::messages::{extendedquery::Bind, simplequery::Query, DecodeContext, Message};
        let latin1 = b"SELECT 'caf\xe9'\0";
        let mut buf = BytesMut::new();
        buf.put_u8(b'Q');
        buf.put_i32(4 + latin1.len() as i32);
        buf.put_slice(latin1);
        let q = Query::decode(&mut buf, &DecodeContext::default())
            .unwrap()
            .unwrap();
        assert_ne!(q.query.as_bytes(), &latin1[..latin1.len() - 1]);

        let mut bind = BytesMut::new();
        bind.put_u8(b'B');
        bind.put_i32(4 + 2 + 2 + 2);
        bind.put_slice(b"\0\0\0\0\0\x05");
        let panicked = std::panic::catch_unwind(move || {
            let _ = Bind::decode(&mut bind, &DecodeContext::default());
        });
        assert!(panicked.is_err(), "pgwire now rejects a truncated Bind");
    }

    #[test]
    fn tags_sum() {
        assert_eq!(tag_rows("INSERT 0 5"), Some(("INSERT 0", 5)));
        assert_eq!(tag_rows("UPDATE 2"), Some(("UPDATE", 2)));
        assert_eq!(tag_rows("CREATE TABLE"), None);
    }

    #[test]
    fn error_fields_parse() {
        let e = error_response(Severity::Error, SqlState::SYNTAX_ERROR, "bad", None);
        let f = ErrorFields::parse(&e[5..]);
        assert_eq!(f.code, "42601");
        assert_eq!(f.message, "bad");
    }
}
