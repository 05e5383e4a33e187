//! Plans for prepared statements that one bound value routes: the shard
//! key compared with `$n` (or inserted as `$n`). Found once per statement;
//! each Bind then costs a key parse and a hash, not a SQL parse.

use super::{classify, Bound, KeyValue, Plan, Route, ShardMap, TableRule};

#[derive(Debug, Clone)]
pub struct KeyedPlan {
    rule: TableRule,
    /// The parameter (0-based) holding the key.
    param: usize,
    write: super::Writes,
}

impl KeyedPlan {
    /// The keyed plan of `sql` under `map`, when it has one.
    pub fn find(sql: &str, map: &ShardMap) -> Option<KeyedPlan> {
        let (rule, param, write) = classify::keyed(sql, map)?;
        Some(KeyedPlan {
            rule: rule.clone(),
            param,
            write,
        })
    }

    /// The plan for these values; `None` when the key value is not one the
    /// shortcut can place (NULL, unreadable, outside every range): then the
    /// statement is planned in full.
    pub fn plan(&self, params: &[Bound], map: &ShardMap) -> Option<Plan> {
        let Some(Bound::Text(text)) = params.get(self.param) else {
            return None;
        };
        let key = KeyValue::parse_typed(self.rule.key_type, text).ok()?;
        let shard = self.rule.shard_for(&key, map.shards)?;
        Some(Plan::Forward {
            route: Route::One(shard),
            write: self.write,
        })
    }
}
