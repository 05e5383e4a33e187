//! Plans by statement text: the same SQL under the same shard map always gets
//! the same plan, so parsing it again is waste. Bounded; cleared when full.

use std::sync::Mutex;

use std::sync::Arc;

use super::normalize::{normalize, Normalized};
use super::{plan, Bound, KeyedPlan, Plan, RouteError, ShardMap};

/// Statements longer than this are planned every time (bulk inserts differ
/// per call and would only churn the cache).
const MAX_SQL: usize = 4096;

/// Keyed by statement text, looked up twice per simple query: foldhash
/// (seeded per process) in place of SipHash, about 400 instructions less
/// per query. The maps are bounded and cleared when full, so texts chosen
/// to collide can cost a client only its own planning time.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

pub struct PlanCache {
    plans: Mutex<HashMap<String, Result<Plan, RouteError>>>,
    /// Prepared statements' keyed plans (or that they have none), by text.
    keyed: Mutex<HashMap<String, Option<Arc<KeyedPlan>>>>,
    capacity: usize,
}

impl PlanCache {
    pub fn new(capacity: usize) -> PlanCache {
        PlanCache {
            plans: Mutex::new(HashMap::default()),
            keyed: Mutex::new(HashMap::default()),
            capacity,
        }
    }

    /// The plan for `sql` under `map` (which must be the map this cache belongs to).
    pub fn plan(&self, sql: &str, map: &ShardMap) -> Result<Plan, RouteError> {
        self.plan_text(sql, map, false).0
    }

    /// The plan for `sql`, and, when one key constant routes it, the text
    /// with its constants taken out, which a shard may run as a prepared
    /// statement in its place (`Prepare`).
    pub fn plan_simple(
        &self,
        sql: &str,
        map: &ShardMap,
    ) -> (Result<Plan, RouteError>, Option<Prepare>) {
        self.plan_text(sql, map, true)
    }

    fn plan_text(
        &self,
        sql: &str,
        map: &ShardMap,
        prepare: bool,
    ) -> (Result<Plan, RouteError>, Option<Prepare>) {
        if sql.len() > MAX_SQL {
            return (plan(sql, map), None);
        }
        if let Some(p) = self.plans.lock().ok().and_then(|m| m.get(sql).cloned()) {
            return (p, None);
        }
        // Statements that differ only in the key's constant share a keyed
        // plan; caching each text would only churn the cache.
        if let Some(n) = normalize(sql) {
            if let Some(k) = self.keyed(&n.template, map) {
                if let Some(p) = k.plan(&n.values, map) {
                    let name = match (prepare, n.types()) {
                        (true, Some(types)) => k.server_name(types),
                        _ => None,
                    };
                    let prepare = name.map(|name| Prepare {
                        name,
                        normalized: n,
                        keyed: k,
                    });
                    return (Ok(p), prepare);
                }
            }
        }
        let p = plan(sql, map);
        if let Ok(mut m) = self.plans.lock() {
            if m.len() >= self.capacity {
                m.clear();
            }
            m.insert(sql.to_string(), p.clone());
        }
        (p, None)
    }
}

/// A simple query's text with its constants taken out, to be prepared on
/// the shard and bound with them: PostgreSQL then parses and plans it once
/// per server connection, not once per query.
#[derive(Debug)]
pub struct Prepare {
    /// The statement's name on a server connection.
    pub name: Arc<str>,
    pub normalized: Normalized,
    keyed: Arc<KeyedPlan>,
}

impl Prepare {
    pub fn values(&self) -> &[Bound] {
        &self.normalized.values
    }

    /// An `INSERT`, `UPDATE` or `DELETE`: its RETURNING rows are described
    /// once it has run, as a simple query's are.
    pub fn modifies(&self) -> bool {
        self.keyed.modifies()
    }

    /// The shard would not prepare the text: later queries go as written.
    pub fn refuse(&self) {
        self.keyed.refuse();
    }

    /// Whether it may also run prepared inside a block, where an error
    /// fails the block and nothing can be sent again as written: only where
    /// its Bind cannot refuse what the text would run. Its constants are
    /// numbers (no conversion to fail), and it returns no rows whose shape
    /// DDL could change (`star_rows`). It must also already be prepared on
    /// the connection (the caller's to check): a Parse that fails, for a
    /// text valid only with its constants, would fail the block.
    pub fn fits_block(&self) -> bool {
        self.normalized.numbers_only() && !self.keyed.star_rows() && !self.keyed.constants_meet()
    }

    /// What to prepare on a connection before it next joins a block.
    pub fn later(&self) -> Arc<Later> {
        Arc::new(Later {
            name: self.name.clone(),
            block_name: format!("{}_b", self.name).into(),
            template: self.normalized.template.as_str().into(),
            types: self
                .normalized
                .types()
                .map(|t| t.collect())
                .unwrap_or_default(),
            keyed: self.keyed.clone(),
        })
    }
}

/// A statement that ran as written in a block on a connection that had not
/// prepared it: the connection prepares it before its next `BEGIN`
/// (outside any transaction, where a refusal costs nothing), and from then
/// on runs it prepared in blocks too.
#[derive(Debug)]
pub struct Later {
    /// The simple query's statement name (`Prepare::name`).
    pub name: Arc<str>,
    /// Its name on the server when prepared for blocks: one nothing but
    /// blocks binds, so its runs are counted exactly
    /// (`backend::BlockStatement`).
    pub block_name: Arc<str>,
    pub template: Box<str>,
    pub types: Box<[u32]>,
    keyed: Arc<KeyedPlan>,
}

impl Later {
    /// The shard would not prepare it: its queries go as written.
    pub fn refuse(&self) {
        self.keyed.refuse();
    }
}

impl PlanCache {
    /// The keyed plan of a statement with parameters, if it has one.
    pub fn keyed(&self, sql: &str, map: &ShardMap) -> Option<Arc<KeyedPlan>> {
        if sql.len() > MAX_SQL {
            return KeyedPlan::find(sql, map).map(Arc::new);
        }
        if let Some(k) = self.keyed.lock().ok().and_then(|m| m.get(sql).cloned()) {
            return k;
        }
        let k = KeyedPlan::find(sql, map).map(Arc::new);
        if let Ok(mut m) = self.keyed.lock() {
            if m.len() >= self.capacity {
                m.clear();
            }
            m.insert(sql.to_string(), k.clone());
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn cached_plans_equal_fresh_ones_and_stay_bounded() {
        let cfg = Config::parse(
            "node_id = \"t\"\n[[users]]\nname = \"u\"\npassword = \"p\"\n[[shards]]\nid = 0\nport = 1\ndatabase = \"d\"\nuser = \"u\"\n[[shards]]\nid = 1\nport = 2\ndatabase = \"d\"\nuser = \"u\"\n[[tables]]\nname = \"a\"\nkey = \"id\"\nkey_type = \"int8\"\n",
            "t.toml",
        )
        .unwrap();
        let map = ShardMap::from_config(&cfg);
        let cache = PlanCache::new(8);
        for i in 0..50 {
            let sql = format!("SELECT * FROM a WHERE id = {}", i % 12);
            assert_eq!(cache.plan(&sql, &map), plan(&sql, &map));
            assert!(cache.plans.lock().unwrap().len() <= 8);
        }
        let bad = "SELECT * FROM a WHERE id = = 1";
        assert_eq!(cache.plan(bad, &map), plan(bad, &map));
        // Texts that share a keyed plan once their constants are taken out
        // must plan exactly as they would in full, errors included.
        for i in [-5i64, 0, 3, 99, 123_456_789_012] {
            for sql in [
                format!("SELECT * FROM a WHERE id = {i}"),
                format!("SELECT * FROM a WHERE id = '{i}' AND note = 'x''y'"),
                format!("UPDATE a SET note = 'n{i}' WHERE id = {i}"),
                format!("DELETE FROM a WHERE {i} = id"),
                format!("INSERT INTO a (id, note) VALUES ({i}, 'v')"),
                format!("INSERT INTO a (note, id) VALUES ('v', {i}.5)"),
                format!("SELECT * FROM a WHERE id = {i} ORDER BY note LIMIT 3"),
                format!("SELECT count(*) FROM a WHERE id = {i}"),
                format!("SELECT * FROM a WHERE id = {i}::bigint"),
                "SELECT * FROM a WHERE id = 'abc'".to_string(),
                "SELECT * FROM a WHERE id = 99999999999999999999".to_string(),
            ] {
                assert_eq!(cache.plan(&sql, &map), plan(&sql, &map), "{sql}");
            }
        }
    }
}
