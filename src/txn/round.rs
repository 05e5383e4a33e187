//! One statement to several server connections at once: everything written
//! before anything is read, so the shards work in parallel; and what each
//! answered.

use super::{Participant, Report};
use crate::backend::{BackendError, ServerConn};
use crate::protocol::{ErrorFields, Frame};
use crate::router::ShardId;

/// What one statement sent to one connection came back with.
pub(super) enum Answer {
    Ok,
    Error(Frame),
    Lost(BackendError),
}

impl Answer {
    pub(super) fn ok(&self) -> bool {
        matches!(self, Answer::Ok)
    }

    pub(super) fn report(&self) -> Option<Report> {
        match self {
            Answer::Ok => None,
            Answer::Error(f) => Some(Report::Server(f.clone())),
            Answer::Lost(e) => Some(Report::Proxy {
                sqlstate: e.sqlstate(),
                message: e.to_string(),
            }),
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Answer::Ok => "ok".into(),
            Answer::Error(f) => ErrorFields::parse(f.body()).to_string(),
            Answer::Lost(e) => e.to_string(),
        }
    }
}

/// Sends `sqls[i]` to `conns[i]`, all before reading any answer, so the
/// shards work in parallel: one write and one read per shard.
pub(super) async fn round(conns: &mut [&mut ServerConn], sqls: &[String]) -> Vec<Answer> {
    let mut sent = Vec::with_capacity(conns.len());
    for (c, sql) in conns.iter_mut().zip(sqls) {
        let r = async {
            c.send_query(sql).await?;
            c.flush().await
        }
        .await;
        sent.push(r);
    }
    let mut out = Vec::with_capacity(conns.len());
    for (c, s) in conns.iter_mut().zip(sent) {
        out.push(match s {
            Err(e) => Answer::Lost(e),
            Ok(()) => read_answer(c).await,
        });
    }
    for c in conns.iter_mut() {
        if c.status != b'I' {
            c.mark_broken();
        }
    }
    out
}

pub(super) async fn read_answer(c: &mut ServerConn) -> Answer {
    match crate::executor::drain(c).await {
        Ok(None) => Answer::Ok,
        Ok(Some(f)) => Answer::Error(f),
        Err(e) => Answer::Lost(e),
    }
}

/// One statement on every connection of `parts` picked by `pick`.
pub(super) async fn round_on(
    parts: &mut [Participant],
    pick: impl Fn(&Participant) -> Option<String>,
) -> Vec<(ShardId, Answer)> {
    let mut conns = Vec::new();
    let mut sqls = Vec::new();
    let mut shards = Vec::new();
    for p in parts.iter_mut() {
        if let Some(sql) = pick(p) {
            shards.push(p.shard());
            sqls.push(sql);
            conns.push(&mut *p.conn);
        }
    }
    let answers = round(&mut conns, &sqls).await;
    shards.into_iter().zip(answers).collect()
}
