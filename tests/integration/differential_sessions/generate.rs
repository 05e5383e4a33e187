//! Seeded random sessions: simple queries of 1–5 statements, and
//! extended-protocol pipelines, over keys spread across the shards.

use super::session::{Msg, Session, Step, REFUSED};
use super::IDS;
use crate::harness::Lcg;

/// The keys and which shard holds each.
pub(super) struct World {
    pub(super) shard_of: Vec<usize>,
}

impl World {
    pub(super) fn id(&self, g: &mut Lcg) -> i64 {
        1 + g.next(IDS as u64) as i64
    }

    /// A value for `u` or `d` of row `id`: only values of rows on the same
    /// shard, so every uniqueness conflict is one a shard can see (the
    /// proxy does not promise uniqueness across shards).
    pub(super) fn val(&self, g: &mut Lcg, id: i64) -> i64 {
        let same: Vec<i64> = (1..=IDS)
            .filter(|k| self.shard_of[*k as usize] == self.shard_of[id as usize])
            .collect();
        let k = same[g.next(same.len() as u64) as usize];
        if g.next(2) == 0 {
            k
        } else {
            k + 100
        }
    }
}

pub(super) fn pick<'a>(g: &mut Lcg, xs: &[&'a str]) -> &'a str {
    xs[g.next(xs.len() as u64) as usize]
}

pub(super) fn delta(g: &mut Lcg) -> i64 {
    [1, 2, 5, -3, -1000][g.next(5) as usize]
}

/// One statement of a simple query.
pub(super) fn simple_stmt(g: &mut Lcg, w: &World) -> String {
    let id = w.id(g);
    match g.next(100) {
        0..=9 => format!("UPDATE t SET b = b + {} WHERE id = {id}", delta(g)),
        10..=13 => format!(
            "UPDATE t SET b = b + {} WHERE id IN ({id}, {})",
            delta(g),
            w.id(g)
        ),
        14..=15 => "UPDATE t SET b = b + 1".to_string(),
        16..=19 => format!(
            "INSERT INTO t (id, b, u, d) VALUES ({id}, 5, {}, {})",
            w.val(g, id),
            w.val(g, id)
        ),
        20..=21 => {
            let id2 = w.id(g);
            format!(
                "INSERT INTO t (id, b, u, d) VALUES ({id}, 6, {}, {}), ({id2}, 7, {}, {})",
                w.val(g, id),
                w.val(g, id),
                w.val(g, id2),
                w.val(g, id2)
            )
        }
        22..=24 => format!("DELETE FROM t WHERE id = {id}"),
        25..=28 => format!("UPDATE t SET u = {} WHERE id = {id}", w.val(g, id)),
        29..=32 => format!("UPDATE t SET d = {} WHERE id = {id}", w.val(g, id)),
        33..=36 => format!("SELECT id, b, u, d FROM t WHERE id = {id}"),
        37..=38 => format!(
            "SELECT id, b FROM t WHERE id IN ({id}, {}) ORDER BY id",
            w.id(g)
        ),
        39..=40 => "SELECT id, b, u, d FROM t ORDER BY id".to_string(),
        41..=42 => "SELECT count(*), sum(b) FROM t".to_string(),
        43..=45 => format!("SELECT b / 0 FROM t WHERE id = {id}"),
        46 => "SELECT 1 / 0".to_string(),
        47..=55 => pick(
            g,
            &[
                "BEGIN",
                "BEGIN",
                "START TRANSACTION",
                "BEGIN ISOLATION LEVEL REPEATABLE READ",
            ],
        )
        .to_string(),
        56..=65 => pick(g, &["COMMIT", "COMMIT", "END", "ROLLBACK", "ABORT"]).to_string(),
        66..=73 => pick(
            g,
            &[
                "SAVEPOINT a",
                "SAVEPOINT b",
                "RELEASE a",
                "RELEASE SAVEPOINT b",
                "ROLLBACK TO a",
                "ROLLBACK TO SAVEPOINT b",
            ],
        )
        .to_string(),
        74..=82 => pick(
            g,
            &[
                "SET LOCAL lock_timeout = '1s'",
                "SET lock_timeout = '2s'",
                "RESET lock_timeout",
                "SHOW lock_timeout",
                "SELECT set_config('lock_timeout', '3s', false)",
                "SELECT set_config('lock_timeout', '4s', true)",
                "SELECT current_setting('lock_timeout')",
            ],
        )
        .to_string(),
        83..=85 => REFUSED[g.next(REFUSED.len() as u64) as usize].0.to_string(),
        86..=89 => format!(
            "INSERT INTO t (id, b, u, d) VALUES ({id}, 1, {}, {}) ON CONFLICT (id) DO UPDATE SET b = t.b + 1",
            w.val(g, id),
            w.val(g, id)
        ),
        _ => format!("UPDATE t SET b = b - 1000 WHERE id = {id}"),
    }
}

pub(super) fn simple_session(g: &mut Lcg, w: &World) -> Session {
    let steps = (0..1 + g.next(4))
        .map(|_| Step::Query((0..1 + g.next(5)).map(|_| simple_stmt(g, w)).collect()))
        .collect();
    Session { steps }
}

/// Statements of the extended protocol: SQL and how to make its parameters.
pub(super) const EXT: &[&str] = &[
    "SELECT id, b, u, d FROM t WHERE id = $1",
    "UPDATE t SET b = b + $2 WHERE id = $1",
    "SELECT b / $2 FROM t WHERE id = $1",
    "INSERT INTO t (id, b, u, d) VALUES ($1, $2, $3, $4)",
    "UPDATE t SET u = $2 WHERE id = $1",
    "UPDATE t SET d = $2 WHERE id = $1",
    "DELETE FROM t WHERE id = $1",
    "SELECT id, b FROM t ORDER BY id",
    "SELECT count(*), sum(b) FROM t",
    "SELECT id, b FROM t WHERE id IN ($1, $2) ORDER BY id",
    "UPDATE t SET b = b + 1 WHERE id IN ($1, $2)",
    "UPDATE t SET b = b + $1",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT a",
    "ROLLBACK TO a",
    "RELEASE a",
    "SET LOCAL lock_timeout = '1s'",
    "SHOW lock_timeout",
    "SELECT set_config('lock_timeout', $1, false)",
    "SELECT id, b FROM t WHERE b >= $1 ORDER BY id",
    "SELECT id, sum(b) OVER () FROM t",
];

pub(super) fn ext_params(g: &mut Lcg, w: &World, kind: usize) -> Vec<String> {
    let id = w.id(g);
    let v = match kind {
        0 | 6 => vec![id],
        1 => vec![id, delta(g)],
        2 => vec![id, g.next(2) as i64],
        3 => vec![id, 1 + g.next(9) as i64, w.val(g, id), w.val(g, id)],
        4 | 5 => vec![id, w.val(g, id)],
        9 | 10 => vec![id, w.id(g)],
        11 => vec![[1, -1000][g.next(2) as usize]],
        20 => return vec!["3s".to_string()],
        21 => vec![10 * g.next(8) as i64],
        _ => vec![],
    };
    v.into_iter().map(|n| n.to_string()).collect()
}

pub(super) fn ext_kind(g: &mut Lcg) -> usize {
    // Data statements most of the time, block control and settings often.
    match g.next(100) {
        0..=59 => [0, 1, 1, 2, 3, 4, 5, 6, 7, 7, 8, 9, 10, 11, 21][g.next(15) as usize],
        60..=87 => [12, 12, 13, 13, 14, 15, 16, 17][g.next(8) as usize],
        88..=96 => [18, 19, 20][g.next(3) as usize],
        _ => 22,
    }
}

pub(super) fn extended_session(g: &mut Lcg, w: &World) -> Session {
    let mut named = Vec::new();
    let steps = (0..1 + g.next(3))
        .map(|_| pipeline(g, w, &mut named))
        .collect();
    Session { steps }
}

/// Simple queries and pipelines in one session, as drivers that send
/// `BEGIN`/`COMMIT` as simple queries and statements extended do.
pub(super) fn mixed_session(g: &mut Lcg, w: &World) -> Session {
    let mut named = Vec::new();
    let mut steps = Vec::new();
    for _ in 0..2 + g.next(3) {
        if g.next(2) == 0 {
            let n = 1 + g.next(3);
            steps.push(Step::Query((0..n).map(|_| simple_stmt(g, w)).collect()));
        } else {
            steps.push(pipeline(g, w, &mut named));
        }
    }
    Session { steps }
}

/// One pipeline; `named` holds the session's named statements (name, kind).
fn pipeline(g: &mut Lcg, w: &World, named: &mut Vec<(String, usize)>) -> Step {
    let mut msgs = Vec::new();
    for _ in 0..1 + g.next(5) {
        let reuse = !named.is_empty() && g.next(4) == 0;
        let (stmt, kind) = if reuse {
            named[g.next(named.len() as u64) as usize].clone()
        } else {
            let kind = ext_kind(g);
            let name = if g.next(3) == 0 {
                let n = format!("s{}", named.len() + 1);
                named.push((n.clone(), kind));
                n
            } else {
                String::new()
            };
            msgs.push(Msg::Parse {
                name: name.clone(),
                sql: EXT[kind].to_string(),
            });
            (name, kind)
        };
        if g.next(10) == 0 {
            msgs.push(Msg::Describe {
                portal: false,
                name: stmt.clone(),
            });
        }
        let portal = if g.next(5) == 0 { "p1" } else { "" }.to_string();
        msgs.push(Msg::Bind {
            portal: portal.clone(),
            stmt,
            params: ext_params(g, w, kind),
        });
        if g.next(5) == 0 {
            msgs.push(Msg::Describe {
                portal: true,
                name: portal.clone(),
            });
        }
        let limited = g.next(10) < 3;
        msgs.push(Msg::Execute {
            portal: portal.clone(),
            max_rows: if limited { 1 + g.next(2) as i32 } else { 0 },
        });
        // Only a portal with rows continues; re-running a completed
        // portal of a utility statement is kept rare (one distinct case).
        let continues = matches!(kind, 0 | 2 | 7 | 8 | 9 | 19 | 20 | 21);
        if (limited && continues && g.next(5) < 3) || g.next(50) == 0 {
            if g.next(3) == 0 {
                msgs.push(Msg::Flush);
            }
            msgs.push(Msg::Execute {
                portal: portal.clone(),
                max_rows: 0,
            });
        }
        if !portal.is_empty() && g.next(3) == 0 {
            msgs.push(Msg::Close {
                portal: true,
                name: portal,
            });
        }
        match g.next(20) {
            0..=6 => msgs.push(Msg::Sync),
            7..=10 => msgs.push(Msg::Flush),
            _ => {}
        }
    }
    if !matches!(msgs.last(), Some(Msg::Sync)) {
        msgs.push(Msg::Sync);
    }
    Step::Pipeline(msgs)
}
