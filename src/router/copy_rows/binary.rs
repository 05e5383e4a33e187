//! The binary COPY format: the header, then one tuple at a time (a field
//! count, then each field's length and bytes), read far enough to find the
//! key; the trailer (a count of -1) ends the data.

use super::*;

/// The binary format's signature (flags and header-extension length follow).
pub(super) const BINARY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

impl RowRouter {
    /// Binary format: the header, then one tuple at a time. Returns the
    /// rest of `data`.
    pub(super) fn feed_binary<'d>(
        &mut self,
        data: &'d [u8],
        sink: &mut dyn FnMut(Dest, u64, &[u8]),
    ) -> Result<&'d [u8], RowError> {
        // Work on the unfinished piece plus as much of `data` as it needs.
        let have = self.partial.len();
        let joined: std::borrow::Cow<[u8]> = if have == 0 {
            std::borrow::Cow::Borrowed(data)
        } else {
            let mut v = std::mem::take(&mut self.partial);
            v.extend_from_slice(data);
            std::borrow::Cow::Owned(v)
        };
        let buf: &[u8] = &joined;
        let need = if self.binary_header {
            binary_header_len(buf)
        } else {
            self.tuple_len(buf)?
        };
        let Some(len) = need else {
            // Not complete yet: keep it all.
            if buf.len() > self.max_row {
                return Err(self.line_error(
                    SqlState::PROGRAM_LIMIT_EXCEEDED,
                    format!(
                        "a COPY row longer than {} bytes is refused by Pieskieo (limits.max_message_size)",
                        self.max_row
                    ),
                    None,
                ));
            }
            self.partial = buf.to_vec();
            return Ok(&[]);
        };
        if self.binary_header {
            if buf.get(..BINARY_SIGNATURE.len()) != Some(BINARY_SIGNATURE) {
                return Err(self.line_error(
                    SqlState::BAD_COPY_FILE_FORMAT,
                    "COPY file signature not recognized".into(),
                    None,
                ));
            }
            self.binary_header = false;
            sink(Dest::All, 0, &buf[..len]);
        } else {
            let tuple = &buf[..len];
            let count = i16::from_be_bytes([tuple[0], tuple[1]]);
            if count == -1 {
                self.done = true;
                if self.keyless.is_some() {
                    // After the rows still waiting for keys.
                    self.queue_tuple(tuple, false);
                } else {
                    sink(Dest::All, self.line, tuple);
                }
            } else {
                self.line += 1;
                if self.keyless.is_some() {
                    self.queue_tuple(tuple, true);
                } else {
                    let shard = self.binary_key(tuple, count)?;
                    sink(Dest::Shard(shard), self.line, tuple);
                }
            }
        }
        // What of `data` this piece used: everything past the old partial.
        let used = len.saturating_sub(have);
        Ok(&data[used.min(data.len())..])
    }

    /// The length of the tuple (or trailer) at the start of `buf`, once
    /// it is all there.
    fn tuple_len(&self, buf: &[u8]) -> Result<Option<usize>, RowError> {
        let Some(c) = buf.get(..2) else {
            return Ok(None);
        };
        let count = i16::from_be_bytes([c[0], c[1]]);
        if count == -1 {
            return Ok(Some(2));
        }
        if count < 0 || count as usize != self.columns.len() {
            return Err(self
                .line_error(
                    SqlState::BAD_COPY_FILE_FORMAT,
                    format!(
                        "row field count is {count}, expected {}",
                        self.columns.len()
                    ),
                    None,
                )
                .at_line(self.line + 1));
        }
        let mut at = 2usize;
        for _ in 0..count {
            let Some(l) = buf.get(at..at + 4) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
            at += 4;
            if len > 0 {
                at += len as usize;
            } else if len < -1 {
                return Err(self
                    .line_error(
                        SqlState::BAD_COPY_FILE_FORMAT,
                        "invalid field size".into(),
                        None,
                    )
                    .at_line(self.line + 1));
            }
            if at > buf.len() {
                return Ok(None);
            }
        }
        Ok(Some(at))
    }

    /// The shard of a binary tuple's key.
    fn binary_key(&mut self, tuple: &[u8], count: i16) -> Result<ShardId, RowError> {
        let mut at = 2usize;
        for i in 0..count as usize {
            let l = &tuple[at..at + 4];
            let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]);
            at += 4;
            let field = if len >= 0 {
                let f = &tuple[at..at + len as usize];
                at += len as usize;
                Some(f)
            } else {
                None
            };
            if i != self.key {
                continue;
            }
            let Some(f) = field else {
                if self.null_key.is_none() {
                    self.null_key = Some(self.null_key_error(None));
                }
                return Ok(self.null_shard);
            };
            let bad = |what: &str| {
                let mut e = self.line_error(
                    SqlState::INVALID_BINARY_REPRESENTATION,
                    format!("incorrect binary data format{what}"),
                    None,
                );
                e.context = format!(
                    "COPY {}, line {}, column {}",
                    self.rule.name, self.line, self.rule.key
                );
                e
            };
            let key = match (self.rule.key_type, f.len()) {
                (KeyType::Int2, 2) => KeyValue::Int(i16::from_be_bytes([f[0], f[1]]) as i64),
                (KeyType::Int4, 4) => {
                    KeyValue::Int(i32::from_be_bytes([f[0], f[1], f[2], f[3]]) as i64)
                }
                (KeyType::Int8, 8) => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(f);
                    KeyValue::Int(i64::from_be_bytes(b))
                }
                (KeyType::Uuid, 16) => {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(f);
                    KeyValue::Uuid(b)
                }
                (KeyType::Text, _) => match std::str::from_utf8(f) {
                    Ok(s) => KeyValue::Text(s.to_string()),
                    Err(_) => {
                        return Err(self.line_error(
                            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
                            "invalid byte sequence for encoding \"UTF8\"".into(),
                            None,
                        ))
                    }
                },
                _ => return Err(bad(&format!(" in column \"{}\"", self.rule.key))),
            };
            return self
                .rule
                .place(&key, self.shards)
                .map_err(|e| self.line_error(e.sqlstate(), e.to_string(), None));
        }
        Err(self.line_error(
            SqlState::BAD_COPY_FILE_FORMAT,
            "row field count is wrong".into(),
            None,
        ))
    }
}

/// The length of the binary header at the start of `buf`, once it is all there.
fn binary_header_len(buf: &[u8]) -> Option<usize> {
    let base = BINARY_SIGNATURE.len() + 8;
    let ext = buf.get(BINARY_SIGNATURE.len() + 4..base)?;
    let ext = u32::from_be_bytes([ext[0], ext[1], ext[2], ext[3]]) as usize;
    (buf.len() >= base + ext).then_some(base + ext)
}
