//! Where a COPY line ends, by PostgreSQL's rules (`CopyReadLineText`): the
//! first line's end (LF, CR or CRLF) is every line's, a backslash (text) or
//! quotes (CSV) make a line end data, and in a client-only encoding whole
//! characters are passed over.

use super::{CopyFormat, RowError, RowRouter, Scan};
use crate::error::SqlState;

/// A COPY's line end: PostgreSQL takes the first line's for all of them and
/// refuses data whose line ends change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Eol {
    /// No line has ended yet.
    Unknown,
    Nl,
    Cr,
    CrNl,
}

impl RowRouter {
    /// The index just past the line end in `data`, continuing `scan`, by
    /// PostgreSQL's rules (`CopyReadLineText`): the first line's end is
    /// every line's, a backslash (text) or quotes (CSV) make a line end
    /// data, and in a client-only encoding whole characters are passed over.
    pub(super) fn find_end(
        &mut self,
        data: &[u8],
        scan: &mut Scan,
    ) -> Result<Option<usize>, RowError> {
        let csv = self.opts.format == CopyFormat::Csv;
        let (quote, escape) = (self.opts.quote, self.opts.escape);
        for (i, &c) in data.iter().enumerate() {
            if std::mem::take(&mut scan.cr) {
                return self.after_cr(c == b'\n', i).map(Some);
            }
            if scan.skip > 0 {
                scan.skip -= 1;
                continue;
            }
            if csv {
                // Inside quotes an escape (other than the quote itself) takes
                // the next byte as data; a doubled quote closes and reopens.
                if scan.in_quote {
                    if scan.escaped {
                        scan.escaped = false;
                        scan.skip = self.enc.char_len(c) - 1;
                    } else if c == escape && escape != quote {
                        scan.escaped = true;
                    } else if c == quote {
                        scan.in_quote = false;
                    } else {
                        scan.skip = self.enc.char_len(c) - 1;
                    }
                    continue;
                }
                if c == quote {
                    scan.in_quote = true;
                    continue;
                }
            } else if scan.escaped {
                // One byte, as PostgreSQL reads it: not a whole character.
                scan.escaped = false;
                continue;
            } else if c == b'\\' {
                scan.escaped = true;
                continue;
            }
            match c {
                b'\r' => match self.eol {
                    Eol::Nl => return Err(self.eol_error(true)),
                    Eol::Cr => return Ok(Some(i + 1)),
                    Eol::Unknown | Eol::CrNl => match data.get(i + 1) {
                        Some(&n) => return self.after_cr(n == b'\n', i + 1).map(Some),
                        None => scan.cr = true,
                    },
                },
                b'\n' => {
                    if matches!(self.eol, Eol::Cr | Eol::CrNl) {
                        return Err(self.eol_error(false));
                    }
                    self.eol = Eol::Nl;
                    return Ok(Some(i + 1));
                }
                _ => scan.skip = self.enc.char_len(c) - 1,
            }
        }
        Ok(None)
    }

    /// A line-ending `\r` (before index `at`), followed by `\n` or not.
    fn after_cr(&mut self, newline: bool, at: usize) -> Result<usize, RowError> {
        if newline {
            self.eol = Eol::CrNl;
            return Ok(at + 1);
        }
        if self.eol == Eol::CrNl {
            return Err(self.eol_error(true));
        }
        self.eol = Eol::Cr;
        Ok(at)
    }

    /// A line end that is not the data's: PostgreSQL's words.
    pub(super) fn eol_error(&self, cr: bool) -> RowError {
        let csv = self.opts.format == CopyFormat::Csv;
        let (message, hint) = match (csv, cr) {
            (false, true) => (
                "literal carriage return found in data",
                "Use \"\\r\" to represent carriage return.",
            ),
            (false, false) => (
                "literal newline found in data",
                "Use \"\\n\" to represent newline.",
            ),
            (true, true) => (
                "unquoted carriage return found in data",
                "Use quoted CSV field to represent carriage return.",
            ),
            (true, false) => (
                "unquoted newline found in data",
                "Use quoted CSV field to represent newline.",
            ),
        };
        RowError {
            sqlstate: SqlState::BAD_COPY_FILE_FORMAT,
            message: message.into(),
            hint: Some(hint),
            context: format!("COPY {}, line {}", self.rule.name, self.line + 1),
            line: self.line + 1,
        }
    }
}
