//! Distributed transaction ids and the gids that carry them: unique across
//! proxies and restarts with no local state, and self-describing, so any
//! proxy that finds a prepared transaction knows where its decision lives and
//! until when a coordinator could still make it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::router::ShardId;

/// A distributed transaction: 128 bits, the high 48 the commit deadline in
/// milliseconds since the Unix epoch, the low 80 random. The deadline is a
/// point in time judged by the decision shard's clock only: a commit row is
/// accepted before it, an abort row is kept until after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnId(pub u128);

const RANDOM_BITS: u32 = 80;

impl TxnId {
    /// A fresh id whose coordinator has `window` to make its decision.
    pub fn new(window: Duration) -> TxnId {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let deadline = (now + window).as_millis() & ((1 << 48) - 1);
        let random: u128 = rand::random::<u128>() & ((1 << RANDOM_BITS) - 1);
        TxnId(deadline << RANDOM_BITS | random)
    }

    /// The commit deadline, milliseconds since the Unix epoch.
    pub fn deadline_ms(self) -> u64 {
        (self.0 >> RANDOM_BITS) as u64
    }

    /// As a PostgreSQL `uuid` literal (the decision table's key).
    pub fn uuid(self) -> String {
        let h = format!("{:032x}", self.0);
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    /// The deadline as SQL: a `timestamptz` expression made of digits only.
    pub fn deadline_sql(self) -> String {
        format!("to_timestamp({}::float8 / 1000)", self.deadline_ms())
    }
}

impl std::fmt::Display for TxnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

/// Every gid starts with this, then the cluster name.
pub const GID_PREFIX: &str = "pieskieo";

/// A prepared transaction's name:
/// `pieskieo_<cluster>_<txn as 32 hex digits>_<decision shard>_<this shard>`.
/// The shard is in it because gids are unique per PostgreSQL server, and two
/// shards may be databases of one server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gid {
    pub txn: TxnId,
    /// The writer that holds the decision row (it never prepares).
    pub decider: ShardId,
    /// The shard this gid is prepared on.
    pub shard: ShardId,
}

impl Gid {
    pub fn text(&self, cluster: &str) -> String {
        format!(
            "{GID_PREFIX}_{cluster}_{}_{}_{}",
            self.txn, self.decider.0, self.shard.0
        )
    }

    /// One of `cluster`'s gids, read back. Anything else is `None`: another
    /// cluster's or another program's prepared transactions are never touched.
    pub fn parse(cluster: &str, gid: &str) -> Option<Gid> {
        let mut it = gid.rsplitn(4, '_');
        let shard = it.next()?.parse().ok()?;
        let decider = it.next()?.parse().ok()?;
        let txn = it.next()?;
        let head = it.next()?;
        if head != format!("{GID_PREFIX}_{cluster}") || txn.len() != 32 {
            return None;
        }
        let txn = u128::from_str_radix(txn, 16).ok()?;
        Some(Gid {
            txn: TxnId(txn),
            decider: ShardId(decider),
            shard: ShardId(shard),
        })
    }

    /// The `LIKE` pattern of `cluster`'s gids (`_` escaped; the cluster
    /// name is validated to `[A-Za-z0-9_]`).
    pub fn pattern(cluster: &str) -> String {
        format!("{GID_PREFIX}_{cluster}_").replace('_', "\\_") + "%"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gids_round_trip_and_stay_ours() {
        let txn = TxnId(0x0123_4567_89ab_cdef_0011_2233_4455_6677);
        let g = Gid {
            txn,
            decider: ShardId(2),
            shard: ShardId(0),
        };
        let text = g.text("main_1");
        assert_eq!(text, "pieskieo_main_1_0123456789abcdef0011223344556677_2_0");
        assert_eq!(Gid::parse("main_1", &text), Some(g));
        assert_eq!(Gid::parse("main", &text), None);
        assert_eq!(Gid::parse("1", &text), None);
        assert_eq!(Gid::parse("main_1", "other_main_1_00_2_0"), None);
        assert_eq!(txn.uuid(), "01234567-89ab-cdef-0011-223344556677");
    }

    #[test]
    fn ids_carry_their_deadline_and_differ() {
        let a = TxnId::new(Duration::from_secs(60));
        let b = TxnId::new(Duration::from_secs(60));
        assert_ne!(a, b);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(a.deadline_ms() > now + 55_000 && a.deadline_ms() <= now + 60_000);
    }
}
