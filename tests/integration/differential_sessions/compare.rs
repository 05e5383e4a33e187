//! Comparing one run on both systems: the first differing answer, the
//! tables, the shards, what another client sees; and the report of it.

use std::fmt::Write as _;

use super::session::{Session, Step};
use super::wire::{Answer, Line};

/// What one run of a session on both systems gave.
pub(super) struct Outcome {
    /// Per system (oracle first): the answers, one per query or Sync.
    pub(super) answers: [Vec<Answer>; 2],
    /// Per system: the rows of `t` afterwards.
    pub(super) tables: [Vec<String>; 2],
    /// Per system: what another client sees of the settings afterwards.
    pub(super) observer: [Answer; 2],
    /// Problems only the shards can show (rows on the wrong shard,
    /// prepared transactions left behind).
    pub(super) shard_faults: Vec<String>,
}

/// The difference found in one run: a short signature that names it (kept
/// while shrinking, used to tell differences apart) and the whole story.
pub(super) struct Difference {
    pub(super) signature: String,
    pub(super) detail: String,
}

/// Without the rows' values: what a signature keeps of a message.
pub(super) fn kind(line: &Line) -> &str {
    if line.key.starts_with("DataRow") {
        "DataRow"
    } else {
        &line.key
    }
}

/// How Pieskieo's run differs from PostgreSQL's, if it does: the answers
/// in order first (an answer holding a refused statement by the status it
/// ends in only), then the tables, the shards, and the observer.
pub(super) fn compare(session: &Session, out: &Outcome) -> Option<Difference> {
    let loose = session.loose();
    let [o, p] = &out.answers;
    let mut detail = String::new();
    let mut signature = None;
    for i in 0..o.len().max(p.len()) {
        let (a, b) = (o.get(i), p.get(i));
        let lax = loose.get(i).copied().unwrap_or(false);
        let differs = match (a, b) {
            // Where the error comes (the proxy refuses at Bind, the
            // stand-in fails at Execute, which may never be sent) is not
            // compared; the state it leaves is.
            (Some(a), Some(b)) if lax => a.last() != b.last(),
            (Some(a), Some(b)) => a != b,
            _ => true,
        };
        if differs && signature.is_none() {
            let empty = Vec::new();
            let (a, b) = (a.unwrap_or(&empty), b.unwrap_or(&empty));
            let at = (0..a.len().max(b.len()))
                .find(|j| a.get(*j) != b.get(*j))
                .unwrap_or(0);
            let show = |l: Option<&Line>| l.map_or("(nothing)", kind).to_string();
            let (x, y) = if lax {
                (show(a.last()), show(b.last()))
            } else {
                (show(a.get(at)), show(b.get(at)))
            };
            signature = Some(format!(
                "{}PostgreSQL: {x} | Pieskieo: {y}",
                if lax { "[state] " } else { "" }
            ));
        }
    }
    if signature.is_none() && out.tables[0] != out.tables[1] {
        // Told apart by the first error PostgreSQL gave (what should have
        // rolled the writes back) and the protocol.
        let error = o
            .iter()
            .flatten()
            .find(|l| l.key.starts_with("ErrorResponse"))
            .map_or("no error", |l| l.key.as_str());
        let class = match session.steps.first() {
            Some(Step::Query(_)) => "simple",
            _ => "extended",
        };
        signature = Some(format!("table contents differ ({class}; {error})"));
    }
    if signature.is_none() && !out.shard_faults.is_empty() {
        signature = Some(out.shard_faults[0].replace(|c: char| c.is_ascii_digit(), "N"));
    }
    if signature.is_none() && out.observer[0] != out.observer[1] {
        signature = Some("another client sees other settings afterwards".to_string());
    }
    let signature = signature?;
    for (i, step_answers) in [o, p].iter().enumerate() {
        let who = ["PostgreSQL", "Pieskieo"][i];
        writeln!(detail, "  {who} answered:").unwrap();
        for (j, a) in step_answers.iter().enumerate() {
            let lax = if loose.get(j).copied().unwrap_or(false) {
                " (holds a refused statement: compared by state)"
            } else {
                ""
            };
            writeln!(detail, "    answer {}{lax}:", j + 1).unwrap();
            for l in a {
                writeln!(detail, "      {l}").unwrap();
            }
        }
    }
    if out.tables[0] != out.tables[1] {
        writeln!(
            detail,
            "  table t afterwards (id,b,u,d):\n    PostgreSQL: {}\n    Pieskieo:   {}",
            out.tables[0].join(" "),
            out.tables[1].join(" ")
        )
        .unwrap();
    }
    for f in &out.shard_faults {
        writeln!(detail, "  {f}").unwrap();
    }
    if out.observer[0] != out.observer[1] {
        writeln!(
            detail,
            "  another client's `SELECT id, current_setting('lock_timeout') FROM t ORDER BY id` afterwards:\n    PostgreSQL: {}\n    Pieskieo:   {}",
            settings(&out.observer[0]),
            settings(&out.observer[1])
        )
        .unwrap();
    }
    Some(Difference { signature, detail })
}

/// The observer's rows, shortly: `id=setting` for each, and any error.
pub(super) fn settings(a: &Answer) -> String {
    a.iter()
        .filter_map(|l| {
            if l.key.starts_with("DataRow") {
                Some(
                    l.key
                        .trim_start_matches("DataRow [")
                        .trim_end_matches(']')
                        .replace("\", \"", "=")
                        .replace('"', ""),
                )
            } else if l.key.starts_with("ErrorResponse") || l.key.starts_with("!!") {
                Some(l.to_string())
            } else {
                None
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}
