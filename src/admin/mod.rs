//! The admin console (a database of its own, reached over the same wire
//! protocol by configured admin users: `SHOW SHARDS`, `SHOW POOLS`, `SHOW
//! CLIENTS`, `SHOW TRANSACTIONS`, `SHOW STATS`, `SHOW CONFIG`, `SHOW VERSION`)
//! and the Prometheus metrics endpoint.

mod endpoint;
mod metrics;
mod stats;

use bytes::{BufMut, Bytes};

pub use endpoint::serve_metrics;
pub use stats::{ShardStats, Stats};

use crate::frontend::Shared;
use crate::protocol::{command_complete, encode};
use crate::router::leading_words;

/// What the console answers: rows of text under named columns, or an error.
pub enum Answer {
    Rows {
        columns: Vec<&'static str>,
        rows: Vec<Vec<String>>,
    },
    Unknown(String),
    /// The command ran and failed; the message says why.
    Failed(String),
}

/// OID of `text`: every console column is text.
const TEXT_OID: u32 = 25;

impl Answer {
    /// RowDescription, DataRows and CommandComplete for a table answer.
    pub fn encode(&self) -> Vec<Bytes> {
        self.encode_tagged("SHOW")
    }

    /// As [`Answer::encode`], with `verb` in the command tag.
    pub fn encode_tagged(&self, verb: &str) -> Vec<Bytes> {
        let Answer::Rows { columns, rows } = self else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(rows.len() + 2);
        use pgwire::messages::data::{DataRow, FieldDescription, RowDescription};
        let fields = columns
            .iter()
            .map(|c| FieldDescription::new(c.to_string(), 0, 0, TEXT_OID, -1, -1, 0))
            .collect();
        out.push(encode(&RowDescription::new(fields)));
        for r in rows {
            let mut data = bytes::BytesMut::new();
            for v in r {
                data.put_i32(v.len() as i32);
                data.put_slice(v.as_bytes());
            }
            out.push(encode(&DataRow::new(data, r.len() as i16)));
        }
        out.push(command_complete(&format!("{verb} {}", rows.len())));
        out
    }
}

/// Answers one console command.
pub fn answer(sql: &str, shared: &Shared) -> Answer {
    let words = leading_words(sql, 2);
    if words.first().map(String::as_str) == Some("reload") {
        return match shared.reload() {
            Ok(changes) => Answer::Rows {
                columns: vec!["change"],
                rows: changes.into_iter().map(|c| vec![c]).collect(),
            },
            Err(e) => Answer::Failed(e),
        };
    }
    let what = match words.as_slice() {
        [show, what] if show == "show" => what.as_str(),
        _ => return Answer::Unknown(sql.trim().to_string()),
    };
    let cfg = &shared.config();
    match what {
        "version" => Answer::Rows {
            columns: vec!["version"],
            rows: vec![vec![format!("Pieskieo {}", env!("CARGO_PKG_VERSION"))]],
        },
        "shards" => Answer::Rows {
            columns: vec![
                "id",
                "host",
                "port",
                "database",
                "user",
                "pool_size",
                "sslmode",
                "connections",
                "idle",
                "state",
            ],
            rows: cfg
                .shards
                .iter()
                .zip(shared.pools.status())
                .map(|(s, (max, size, avail, _))| {
                    vec![
                        s.id.to_string(),
                        s.host.clone(),
                        s.port.to_string(),
                        s.database.clone(),
                        s.user.clone(),
                        max.to_string(),
                        s.sslmode.as_str().into(),
                        size.to_string(),
                        avail.to_string(),
                        match shared.stats.shards.get(s.id as usize) {
                            Some(st) if st.up.load(std::sync::atomic::Ordering::Relaxed) => {
                                "up".into()
                            }
                            _ => "down".into(),
                        },
                    ]
                })
                .collect(),
        },
        "pools" => Answer::Rows {
            columns: vec!["shard", "max_size", "size", "available", "waiting"],
            rows: shared
                .pools
                .status()
                .into_iter()
                .enumerate()
                .map(|(i, (max, size, avail, waiting))| {
                    vec![
                        i.to_string(),
                        max.to_string(),
                        size.to_string(),
                        avail.to_string(),
                        waiting.to_string(),
                    ]
                })
                .collect(),
        },
        "clients" => Answer::Rows {
            columns: vec!["process_id", "user", "address"],
            rows: shared
                .sessions
                .list()
                .into_iter()
                .map(|(pid, user, addr)| vec![pid.to_string(), user, addr])
                .collect(),
        },
        "transactions" => {
            let coord = &shared.coordinator;
            // Only this proxy's: what other proxies have in doubt lives on
            // the shards (`pg_prepared_xacts`, `pieskieo.decisions`).
            let rows: Vec<Vec<String>> = coord
                .in_flight()
                .into_iter()
                .map(|t| vec![t.to_string(), "in flight".into(), String::new()])
                .collect();
            Answer::Rows {
                columns: vec!["transaction", "phase", "shards"],
                rows,
            }
        }
        "stats" => {
            let st = &shared.stats;
            let mut rows: Vec<Vec<String>> = st
                .shards
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let latency = s.latency.snapshot();
                    let n = latency.count();
                    let avg_ms = if n == 0 {
                        0.0
                    } else {
                        latency.sum_secs * 1000.0 / n as f64
                    };
                    vec![
                        format!("shard {i}"),
                        Stats::get(&s.statements).to_string(),
                        Stats::get(&s.transactions).to_string(),
                        Stats::get(&s.errors).to_string(),
                        format!("{avg_ms:.3}"),
                    ]
                })
                .collect();
            for (name, c) in [
                ("commits (one-phase)", &st.commits_one_phase),
                ("commits (two-phase)", &st.commits_two_phase),
                ("aborts", &st.aborts),
                ("recovered commits", &st.recovered_commits),
                ("recovered rollbacks", &st.recovered_rollbacks),
                ("deadlocks", &st.deadlocks),
            ] {
                rows.push(vec![
                    name.to_string(),
                    Stats::get(c).to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]);
            }
            Answer::Rows {
                columns: vec![
                    "what",
                    "statements",
                    "transactions",
                    "errors",
                    "avg_latency_ms",
                ],
                rows,
            }
        }
        "config" => {
            let mut rows = vec![
                vec!["listen".to_string(), cfg.listen.clone()],
                vec!["node_id".into(), cfg.node_id.clone().unwrap_or_default()],
                vec!["cluster".into(), cfg.cluster.clone()],
                vec!["database".into(), cfg.database.clone()],
                vec!["default_shard".into(), cfg.default_shard.to_string()],
                vec!["shards".into(), cfg.shards.len().to_string()],
                vec![
                    "auth_query".into(),
                    cfg.auth_query.as_ref().map_or("off".into(), |q| {
                        format!("shard {}", q.shard.unwrap_or(cfg.default_shard))
                    }),
                ],
                vec![
                    "txn.recovery_grace_ms".into(),
                    cfg.txn.recovery_grace_ms.to_string(),
                ],
                vec![
                    "limits.max_client_connections".into(),
                    cfg.limits.max_client_connections.to_string(),
                ],
                vec!["consistent_reads".into(), cfg.consistent_reads.to_string()],
            ];
            for t in &cfg.tables {
                rows.push(vec![
                    format!("table {}", t.name),
                    format!("{:?} on {} ({:?})", t.method, t.key, t.key_type),
                ]);
            }
            for r in &cfg.reference_tables {
                rows.push(vec![format!("table {r}"), "reference".into()]);
            }
            Answer::Rows {
                columns: vec!["key", "value"],
                rows,
            }
        }
        _ => Answer::Unknown(sql.trim().to_string()),
    }
}
