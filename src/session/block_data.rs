//! The data of a transaction block beside its state: the shards enlisted,
//! the `BEGIN` and prelude replayed on each shard that joins, the settings
//! pending until commit; and how a block's commit is reported to the client.

use super::settings::SettingChange;
use crate::protocol::{self, Severity};
use crate::router::{leading_words, ShardId};
use crate::txn::{CommitOutcome, Participant, Report};

/// A transaction block and the shards enlisted in it.
pub(super) struct Txn {
    /// The `BEGIN` text sent to each shard as it joins.
    pub(super) begin: String,
    /// Block-control statements so far (savepoints, `SET LOCAL`, ...),
    /// replayed in order on each shard that joins later.
    pub(super) prelude: Vec<String>,
    pub(super) savepoints: Vec<String>,
    /// Per savepoint (same order): what `ROLLBACK TO` it takes back.
    marks: Vec<Mark>,
    pub(super) participants: Vec<Participant>,
    /// Session settings changed inside the block; they stick only on commit.
    pub(super) pending: Vec<SettingChange>,
    /// An extended-protocol segment's implicit block: PostgreSQL's
    /// `TBLOCK_STARTED`, where `SET LOCAL` warns (a multi-statement query's
    /// `TBLOCK_IMPLICIT_INPROGRESS` does not).
    pub(super) segment: bool,
    /// A statement that takes a snapshot ran (not SHOW/SET): the isolation
    /// level is fixed from here on.
    pub(super) snapshot: bool,
    /// `consistent_reads`: the block's snapshot was taken on every shard
    /// under the fence (REPEATABLE READ and SERIALIZABLE blocks).
    pub(super) fenced: bool,
    /// Names the block to every proxy's deadlock detector.
    tag: crate::txn::deadlock::Tag,
}

impl Txn {
    pub(super) fn new(begin: &str) -> Txn {
        Txn {
            begin: begin.to_string(),
            prelude: Vec::new(),
            savepoints: Vec::new(),
            marks: Vec::new(),
            participants: Vec::new(),
            pending: Vec::new(),
            segment: false,
            snapshot: false,
            fenced: false,
            tag: crate::txn::deadlock::Tag::random(),
        }
    }

    /// What a shard joining the block receives first: `BEGIN`, tagged for
    /// deadlock detection when that is on.
    pub(super) fn begin_sql(&self, detecting: bool) -> String {
        crate::txn::deadlock::begin_sql(&self.begin, self.tag, detecting)
    }

    /// What a shard joining the block runs before its statement, one query
    /// each: `BEGIN`, the block's leading `SET`s (`SET TRANSACTION
    /// ISOLATION LEVEL` must precede the first query, and the deadlock tag
    /// is a query), the tag, then the rest of the prelude (savepoints: the
    /// tag must not be taken inside one, whose rollback would drop it).
    pub(super) fn head(&self, detecting: bool) -> Vec<String> {
        let sets = self
            .prelude
            .iter()
            .take_while(|s| {
                matches!(
                    leading_words(s, 1).first().map(String::as_str),
                    Some("set" | "reset")
                )
            })
            .count();
        if sets == 0 {
            let mut head = vec![self.begin_sql(detecting)];
            head.extend(self.prelude.iter().cloned());
            return head;
        }
        let mut head = vec![self.begin.clone()];
        head.extend(self.prelude[..sets].iter().cloned());
        if detecting {
            head.push(crate::txn::deadlock::tag_sql(self.tag));
        }
        head.extend(self.prelude[sets..].iter().cloned());
        head
    }

    /// [`Txn::head`] for a shard joining with a statement that takes no
    /// snapshot in PostgreSQL (`LOCK`, `SHOW`) in a block that keeps its
    /// first snapshot: the deadlock tag is taken by the server session
    /// before `BEGIN` (a query in the transaction would take the block's
    /// snapshot there, before the lock waits or long before the first
    /// query), and given back at the connection's next checkout
    /// ([`Txn::untag_sql`]).
    pub(super) fn head_tagged_before(&self) -> Vec<String> {
        let mut head = vec![crate::txn::deadlock::session_tag_sql(self.tag)];
        head.extend(self.head_untagged());
        head
    }

    /// What a shard joining the block runs first, and what its connection
    /// then owes at its next checkout: with `free` (it joins for a
    /// statement that takes no snapshot, in a block that keeps its first
    /// one) and the detector on, [`Txn::head_tagged_before`] and the tag's
    /// giving back; else [`Txn::head`].
    pub(super) fn join_head(&self, detecting: bool, free: bool) -> (Vec<String>, Option<String>) {
        if detecting && free {
            (self.head_tagged_before(), Some(self.untag_sql()))
        } else {
            (self.head(detecting), None)
        }
    }

    /// `BEGIN` and the prelude, for a server session that holds the tag
    /// already ([`Txn::head_tagged_before`]).
    pub(super) fn head_untagged(&self) -> Vec<String> {
        let mut head = vec![self.begin.clone()];
        head.extend(self.prelude.iter().cloned());
        head
    }

    /// Gives back [`Txn::head_tagged_before`]'s tag.
    pub(super) fn untag_sql(&self) -> String {
        crate::txn::deadlock::session_untag_sql(self.tag)
    }

    /// A `SET` or `RESET` ran in the block (`SET LOCAL` too): its
    /// connections' settings are not those the proxy applied.
    pub(super) fn sets_settings(&self) -> bool {
        self.prelude.iter().any(|s| {
            matches!(
                leading_words(s, 1).first().map(String::as_str),
                Some("set" | "reset")
            )
        })
    }

    /// After an aborted commit: a shard that prepared kept the block's
    /// session `SET`s (PostgreSQL settles settings at PREPARE TRANSACTION),
    /// so its connection's settings are unknown now.
    pub(super) fn forget_settings(&mut self) {
        if !self.pending.is_empty() {
            for p in self.participants.iter_mut() {
                p.conn.settings_unknown = true;
            }
        }
    }

    /// `SAVEPOINT name` succeeded.
    pub(super) fn define_savepoint(&mut self, name: String) {
        self.savepoints.push(name);
        self.marks.push(Mark {
            pending: self.pending.len(),
            begin: self.begin.clone(),
        });
    }

    /// `RELEASE` of the savepoint at `at`: it and those after it are gone;
    /// what they did stays.
    pub(super) fn release_savepoint(&mut self, at: usize) {
        self.savepoints.truncate(at);
        self.marks.truncate(at);
    }

    /// `ROLLBACK TO` the savepoint at `at`, which stays: PostgreSQL takes
    /// back every setting changed since, the session's (pending here) and
    /// the block's own modes (its `BEGIN` here) alike.
    pub(super) fn rollback_to_savepoint(&mut self, at: usize) {
        self.savepoints.truncate(at + 1);
        self.marks.truncate(at + 1);
        if let Some(m) = self.marks.get(at) {
            self.pending.truncate(m.pending);
            self.begin = m.begin.clone();
        }
    }

    pub(super) fn has(&self, shard: ShardId) -> bool {
        self.participants.iter().any(|p| p.shard() == shard)
    }
}

/// The block as a savepoint found it.
struct Mark {
    /// How many session-setting changes were pending.
    pending: usize,
    /// The block's `BEGIN` with its modes.
    begin: String,
}

/// A commit's WARNING for the client (the coordinator returns typed
/// outcomes; the session encodes them).
pub(super) fn commit_notice(n: &crate::txn::Notice) -> bytes::Bytes {
    protocol::error_response(Severity::Warning, n.sqlstate, &n.message, None)
}

/// The ErrorResponse for a commit that did not commit: a shard's own error
/// unchanged, the proxy's, or 08007 when the outcome is unknown.
pub(super) fn commit_failure(o: &CommitOutcome) -> bytes::Bytes {
    match o {
        CommitOutcome::Aborted {
            error: Report::Server(frame),
        } => frame.bytes.clone(),
        CommitOutcome::Aborted {
            error: Report::Proxy { sqlstate, message },
        } => protocol::error_response(Severity::Error, *sqlstate, message, None),
        CommitOutcome::Unknown { message, .. } => protocol::error_response(
            Severity::Error,
            crate::error::SqlState::TRANSACTION_RESOLUTION_UNKNOWN,
            message,
            None,
        ),
        CommitOutcome::Committed { .. } => bytes::Bytes::new(),
    }
}

/// How a block's commit ended.
pub(super) enum BlockEnd {
    Committed,
    /// A shard had failed the block without the proxy seeing it: rolled back.
    RolledBack,
    /// The coordinator aborted it; the client has been sent the error.
    Refused,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(t: &Txn) -> Vec<String> {
        t.pending
            .iter()
            .map(|c| match c {
                SettingChange::Set(n, _) => format!("set {n}"),
                SettingChange::Reset(n) => format!("reset {n}"),
                SettingChange::ResetAll => "reset all".into(),
            })
            .collect()
    }

    /// As PostgreSQL: `ROLLBACK TO` takes back the settings and block modes
    /// changed after its savepoint and keeps it; `RELEASE` keeps them.
    #[test]
    fn savepoints_take_back_what_came_after_them() {
        let mut t = Txn::new("BEGIN");
        let set = |n: &str| SettingChange::Set(n.into(), format!("SET {n} = 1"));
        t.pending.push(set("a"));
        t.define_savepoint("s1".into());
        t.pending.push(set("b"));
        t.begin = "BEGIN\nISOLATION LEVEL READ COMMITTED".into();
        t.define_savepoint("s2".into());
        t.pending.push(SettingChange::Reset("a".into()));
        t.rollback_to_savepoint(1);
        assert_eq!(pending(&t), ["set a", "set b"]);
        assert_eq!(t.savepoints, ["s1", "s2"]);
        t.rollback_to_savepoint(0);
        assert_eq!(pending(&t), ["set a"]);
        assert_eq!(t.begin, "BEGIN");
        assert_eq!(t.savepoints, ["s1"]);
        t.pending.push(set("c"));
        t.release_savepoint(0);
        assert!(t.savepoints.is_empty());
        assert_eq!(pending(&t), ["set a", "set c"]);
        // A savepoint defined after a release counts from there.
        t.define_savepoint("s3".into());
        t.pending.push(set("d"));
        t.rollback_to_savepoint(0);
        assert_eq!(pending(&t), ["set a", "set c"]);
    }
}
