//! Cross-shard reads that need more than concatenation: sorted merges,
//! `LIMIT`/`OFFSET`, `DISTINCT`, and aggregates with `GROUP BY`/`HAVING`.
//!
//! The router rewrites the client's `SELECT` into the statement each shard
//! runs (partial aggregates, hidden sort keys, `LIMIT offset+limit`) and a
//! [`MergePlan`] saying how the answers combine; [`run`] carries it out on
//! the shards' text-format results.

mod aggregate;
mod binary;
mod decimal;
mod having;
mod run;
mod value;
mod wire;

pub use decimal::{Decimal, Numeric};
pub use run::{describe, run, RunOptions};
pub use value::{format_float, Kind};

/// How to combine the shards' answers to a rewritten `SELECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MergePlan {
    /// The statement every shard runs.
    pub sql: String,
    pub shape: Shape,
    /// Sort keys: for [`Shape::Rows`] an index among the hidden columns, for
    /// [`Shape::Groups`] an index into the output row.
    pub order: Vec<SortKey>,
    pub offset: u64,
    pub limit: Option<u64>,
    /// Drop duplicate (visible) rows.
    pub distinct: bool,
    /// With parameters: the statement's `$k` is the client's parameter
    /// `params[k - 1]` (0-based); empty without parameters.
    pub params: Vec<usize>,
    /// Whether the statement may write (a function the classifier does not
    /// know): it still merges as a read, but `consistent_reads` does not
    /// take its snapshot at Bind (the function's own queries take theirs
    /// while it runs).
    pub write: crate::router::Writes,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Shards' rows pass through; the last `hidden` columns (sort keys) are
    /// dropped. Rows stream: nothing is buffered but one row per shard.
    Rows { hidden: usize },
    /// Shards return partial aggregates per group; groups with equal `keys`
    /// (shard columns) are combined into `outputs`, of which the first
    /// `visible` are the client's columns.
    Groups {
        keys: Vec<usize>,
        outputs: Vec<Output>,
        visible: usize,
        having: Option<Cond>,
    },
}

/// One column of a merged group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A grouped column or constant: any shard's value.
    Pass(usize),
    /// An aggregate over partials in shard column `col` (and, for `avg`, the
    /// partial count in `count`).
    Agg {
        func: AggFunc,
        col: usize,
        count: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    Count,
    Sum,
    Min,
    Max,
    Avg,
    BoolAnd,
    BoolOr,
}

impl AggFunc {
    pub fn name(self) -> &'static str {
        match self {
            AggFunc::Count => "count",
            AggFunc::Sum => "sum",
            AggFunc::Min => "min",
            AggFunc::Max => "max",
            AggFunc::Avg => "avg",
            AggFunc::BoolAnd => "bool_and",
            AggFunc::BoolOr => "bool_or",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SortKey {
    pub col: usize,
    pub desc: bool,
    pub nulls_first: bool,
}

/// A `HAVING` condition over output columns, evaluated after the merge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cond {
    Col(usize),
    Lit(Lit),
    Cmp(CmpOp, Box<Cond>, Box<Cond>),
    And(Box<Cond>, Box<Cond>),
    Or(Box<Cond>, Box<Cond>),
    Not(Box<Cond>),
    IsNull(Box<Cond>, bool),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lit {
    Null,
    Number(String),
    Text(String),
    Bool(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl MergePlan {
    /// What the proxy does with the shards' answers, for route preview.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match &self.shape {
            Shape::Rows { .. } if self.order.is_empty() => {
                parts.push("concatenate rows".to_string())
            }
            Shape::Rows { .. } => parts.push(format!(
                "streaming sorted merge on {} key{}",
                self.order.len(),
                if self.order.len() == 1 { "" } else { "s" }
            )),
            Shape::Groups {
                keys,
                outputs,
                having,
                ..
            } => {
                let aggs: Vec<&str> = outputs
                    .iter()
                    .filter_map(|o| match o {
                        Output::Agg { func, .. } => Some(func.name()),
                        Output::Pass(_) => None,
                    })
                    .collect();
                let mut s = if keys.is_empty() {
                    "combine one partial row per shard".to_string()
                } else {
                    format!(
                        "merge groups on {} key{}",
                        keys.len(),
                        if keys.len() == 1 { "" } else { "s" }
                    )
                };
                if !aggs.is_empty() {
                    s.push_str(&format!(" ({})", aggs.join(", ")));
                }
                parts.push(s);
                if having.is_some() {
                    parts.push("HAVING after merge".into());
                }
                if !self.order.is_empty() {
                    parts.push(format!(
                        "sort on {} key{}",
                        self.order.len(),
                        if self.order.len() == 1 { "" } else { "s" }
                    ));
                }
            }
        }
        if self.distinct {
            parts.push("remove duplicates".into());
        }
        if self.offset > 0 {
            parts.push(format!("skip {}", self.offset));
        }
        if let Some(l) = self.limit {
            parts.push(format!("limit {l}"));
        }
        parts.join("; ")
    }
}

/// The shards' database collations, learnt when the proxy connects to them:
/// the merge may compare text by bytes only when every shard does.
#[derive(Debug, Default)]
pub struct Collations {
    seen: std::sync::Mutex<std::collections::BTreeMap<u32, String>>,
}

impl Collations {
    /// Records a shard's `provider:collation` (`c:C`, `i:en_US`, ...).
    pub fn note(&self, shard: u32, collation: &str) {
        if let Ok(mut m) = self.seen.lock() {
            m.insert(shard, collation.to_string());
        }
    }

    /// Whether every shard checked so far sorts text in byte order.
    pub fn bytewise(&self) -> bool {
        self.seen.lock().is_ok_and(|m| {
            m.values()
                .all(|c| matches!(c.as_str(), "c:C" | "c:POSIX" | "c:C.UTF-8" | "c:C.utf8"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Collations;

    #[test]
    fn text_order_is_bytewise_only_under_c_collations() {
        let c = Collations::default();
        assert!(c.bytewise(), "nothing known yet");
        c.note(0, "c:C");
        c.note(1, "c:C.UTF-8");
        assert!(c.bytewise());
        c.note(2, "c:en_US.UTF-8");
        assert!(!c.bytewise());
        c.note(2, "i:C");
        assert!(!c.bytewise(), "ICU orders text its own way");
    }
}
