//! A client session as the tester sends it: simple queries and
//! extended-protocol pipelines, their bytes for each system, and the
//! statements the proxy refuses on purpose.

use std::collections::HashMap;

/// Statements Pieskieo refuses on purpose (README, "Supported and not"),
/// each with the reason. PostgreSQL is sent [`TWIN`] in their place — an
/// error with the same SQLSTATE (0A000) — and the query or Sync segment that
/// holds one is compared by state only: the ReadyForQuery status byte it
/// ends in (not where its error came: the proxy refuses at Bind, the twin
/// fails at Execute); everything after it, and the tables, exactly. A Bind
/// that reuses the name of a refused portal counts as holding one.
pub(super) const REFUSED: &[(&str, &str)] = &[
    (
        "SELECT id, sum(b) OVER () FROM t",
        "cross-shard window functions are refused with 0A000 rather than answered wrongly",
    ),
    (
        "SELECT count(DISTINCT b) FROM t",
        "cross-shard DISTINCT aggregates on anything but the shard key are refused with 0A000",
    ),
    ("COMMIT AND CHAIN", "COMMIT AND CHAIN is refused with 0A000"),
    (
        "ROLLBACK AND CHAIN",
        "ROLLBACK AND CHAIN is refused with 0A000",
    ),
];

/// What PostgreSQL runs in place of a refused statement.
pub(super) const TWIN: &str =
    "DO $$BEGIN RAISE EXCEPTION 'refused by the proxy' USING ERRCODE = 'feature_not_supported'; END$$";

pub(super) fn refused(sql: &str) -> bool {
    REFUSED.iter().any(|(s, _)| *s == sql)
}

pub(super) fn for_oracle(sql: &str) -> &str {
    if refused(sql) {
        TWIN
    } else {
        sql
    }
}

/// Session classes.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Class {
    Simple,
    Extended,
    /// Simple queries and pipelines in one session.
    Mixed,
}

/// One client message of the extended protocol.
#[derive(Clone, Debug)]
pub(super) enum Msg {
    Parse {
        name: String,
        sql: String,
    },
    Bind {
        portal: String,
        stmt: String,
        params: Vec<String>,
    },
    Describe {
        portal: bool,
        name: String,
    },
    Execute {
        portal: String,
        max_rows: i32,
    },
    Close {
        portal: bool,
        name: String,
    },
    Flush,
    Sync,
}

/// What a client sends before it reads: a simple query, or a pipeline that
/// ends with Sync (it may hold more Syncs).
#[derive(Clone, Debug)]
pub(super) enum Step {
    Query(Vec<String>),
    Pipeline(Vec<Msg>),
}

#[derive(Clone, Debug)]
pub(super) struct Session {
    pub(super) steps: Vec<Step>,
}

pub(super) fn frame(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
}

pub(super) fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

impl Msg {
    pub(super) fn encode(&self, out: &mut Vec<u8>, oracle: bool) {
        let mut b = Vec::new();
        let tag = match self {
            Msg::Parse { name, sql } => {
                cstr(&mut b, name);
                cstr(&mut b, if oracle { for_oracle(sql) } else { sql });
                b.extend_from_slice(&0i16.to_be_bytes());
                b'P'
            }
            Msg::Bind {
                portal,
                stmt,
                params,
            } => {
                cstr(&mut b, portal);
                cstr(&mut b, stmt);
                b.extend_from_slice(&0i16.to_be_bytes());
                b.extend_from_slice(&(params.len() as i16).to_be_bytes());
                for p in params {
                    b.extend_from_slice(&(p.len() as i32).to_be_bytes());
                    b.extend_from_slice(p.as_bytes());
                }
                b.extend_from_slice(&0i16.to_be_bytes());
                b'B'
            }
            Msg::Describe { portal, name } => {
                b.push(if *portal { b'P' } else { b'S' });
                cstr(&mut b, name);
                b'D'
            }
            Msg::Execute { portal, max_rows } => {
                cstr(&mut b, portal);
                b.extend_from_slice(&max_rows.to_be_bytes());
                b'E'
            }
            Msg::Close { portal, name } => {
                b.push(if *portal { b'P' } else { b'S' });
                cstr(&mut b, name);
                b'C'
            }
            Msg::Flush => b'H',
            Msg::Sync => b'S',
        };
        frame(out, tag, &b);
    }
}

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Msg::Parse { name, sql } => write!(f, "Parse {name:?} {sql:?}"),
            Msg::Bind {
                portal,
                stmt,
                params,
            } => write!(
                f,
                "Bind portal={portal:?} statement={stmt:?} params={params:?}"
            ),
            Msg::Describe { portal, name } => {
                write!(f, "Describe {} {name:?}", if *portal { 'P' } else { 'S' })
            }
            Msg::Execute { portal, max_rows } => {
                write!(f, "Execute {portal:?} max_rows={max_rows}")
            }
            Msg::Close { portal, name } => {
                write!(f, "Close {} {name:?}", if *portal { 'P' } else { 'S' })
            }
            Msg::Flush => write!(f, "Flush"),
            Msg::Sync => write!(f, "Sync"),
        }
    }
}

/// What ends the server's answer to one client message.
#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Expect {
    ParseComplete,
    BindComplete,
    /// RowDescription or NoData (after any ParameterDescription).
    Description,
    /// CommandComplete, PortalSuspended or EmptyQueryResponse.
    Completion,
    CloseComplete,
    ReadyForQuery,
}

impl Expect {
    pub(super) fn ends(self, t: u8) -> bool {
        match self {
            Expect::ParseComplete => t == b'1',
            Expect::BindComplete => t == b'2',
            Expect::Description => t == b'T' || t == b'n',
            Expect::Completion => matches!(t, b'C' | b's' | b'I'),
            Expect::CloseComplete => t == b'3',
            Expect::ReadyForQuery => t == b'Z',
        }
    }
}

impl Msg {
    fn expect(&self) -> Option<Expect> {
        Some(match self {
            Msg::Parse { .. } => Expect::ParseComplete,
            Msg::Bind { .. } => Expect::BindComplete,
            Msg::Describe { .. } => Expect::Description,
            Msg::Execute { .. } => Expect::Completion,
            Msg::Close { .. } => Expect::CloseComplete,
            Msg::Sync => Expect::ReadyForQuery,
            Msg::Flush => return None,
        })
    }
}

impl Step {
    /// What a client sends for one system, in the writes it makes: a query
    /// is one write; a pipeline one write up to each Flush, after which the
    /// client waits for the answers (as asyncpg and pgjdbc do), and one for
    /// the rest. Each write with the answers that end what it asks.
    pub(super) fn writes(&self, oracle: bool) -> Vec<(Vec<u8>, Vec<Expect>)> {
        match self {
            Step::Query(stmts) => {
                let sql: Vec<&str> = stmts
                    .iter()
                    .map(|s| if oracle { for_oracle(s) } else { s.as_str() })
                    .collect();
                let mut b = Vec::new();
                cstr(&mut b, &sql.join("; "));
                let mut out = Vec::new();
                frame(&mut out, b'Q', &b);
                vec![(out, vec![Expect::ReadyForQuery])]
            }
            Step::Pipeline(msgs) => {
                let mut writes = Vec::new();
                let (mut bytes, mut expect) = (Vec::new(), Vec::new());
                for m in msgs {
                    m.encode(&mut bytes, oracle);
                    expect.extend(m.expect());
                    if matches!(m, Msg::Flush) {
                        writes.push((std::mem::take(&mut bytes), std::mem::take(&mut expect)));
                    }
                }
                if !bytes.is_empty() {
                    writes.push((bytes, expect));
                }
                writes
            }
        }
    }
}

impl Session {
    /// For each answer (one per query, one per Sync): whether it involves a
    /// refused statement and is compared by state only.
    pub(super) fn loose(&self) -> Vec<bool> {
        let mut out = Vec::new();
        let mut stmts: HashMap<String, bool> = HashMap::new();
        let mut portals: HashMap<String, bool> = HashMap::new();
        for step in &self.steps {
            match step {
                Step::Query(s) => out.push(s.iter().any(|s| refused(s))),
                Step::Pipeline(msgs) => {
                    let mut touched = false;
                    for m in msgs {
                        match m {
                            Msg::Parse { name, sql } => {
                                stmts.insert(name.clone(), refused(sql));
                                touched |= refused(sql);
                            }
                            Msg::Bind { portal, stmt, .. } => {
                                let r = stmts.get(stmt).copied().unwrap_or(false);
                                // Rebinding a name a refused statement had:
                                // whether it still exists depends on where
                                // the proxy refused (Bind) and the stand-in
                                // failed (Execute).
                                let had = portals.insert(portal.clone(), r).unwrap_or(false);
                                touched |= r || had;
                            }
                            Msg::Describe { portal: true, name }
                            | Msg::Execute { portal: name, .. } => {
                                touched |= portals.get(name).copied().unwrap_or(false);
                            }
                            Msg::Describe {
                                portal: false,
                                name,
                            } => touched |= stmts.get(name).copied().unwrap_or(false),
                            Msg::Sync => {
                                out.push(touched);
                                touched = false;
                            }
                            Msg::Close { .. } | Msg::Flush => {}
                        }
                    }
                }
            }
        }
        out
    }

    pub(super) fn items(&self) -> usize {
        self.steps
            .iter()
            .map(|s| match s {
                Step::Query(v) => v.len(),
                Step::Pipeline(v) => v.len(),
            })
            .sum()
    }
}

impl std::fmt::Display for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            match step {
                Step::Query(s) => writeln!(f, "  {}. Query {:?}", i + 1, s.join("; "))?,
                Step::Pipeline(msgs) => {
                    writeln!(f, "  {}. pipeline (one write; after a Flush the client waits for the answers so far):", i + 1)?;
                    for m in msgs {
                        writeln!(f, "       {m}")?;
                    }
                }
            }
        }
        Ok(())
    }
}
