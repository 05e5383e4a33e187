//! Statements with subqueries and CTEs: every sharded table a statement
//! reads, at any depth and with SQL's name scoping, and whether the key
//! conditions pin all of them to one shard.
//!
//! A sharded table is *pinned* by `key = c` / `key IN (...)` in its own
//! query level's top-level `AND`; it *follows* another when they are joined
//! on co-located keys at the same level (either side may pin the group), or
//! when a subquery compares its key with a key of an enclosing level
//! (`WHERE o.account_id = a.id`): the subquery then needs only rows on the
//! shard of the outer row. The outer row is never narrowed by the inner
//! one — `NOT EXISTS (... AND o.account_id = 5)` keeps every other row.

use super::bindings::{co_located, conjuncts, is_key_ref, join_conditions, key_shards, Binding};
use super::*;

/// Where the sharded tables of a statement with subqueries can be read.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reach {
    /// No sharded table is read anywhere (CTE names and reference tables only).
    NoSharded,
    /// Every sharded table read is pinned to this shard.
    One(ShardId),
    /// Every sharded table outside the top-level FROM list is read by a
    /// subquery correlated on keys with it (or there is none): each shard
    /// can evaluate the subqueries for its own rows.
    Local,
    /// Some sharded table is not pinned to one shard, or two are pinned to
    /// different shards, or the walk met something it does not model.
    Spread,
}

/// One `SELECT`'s FROM list: the names it brings into scope.
struct Level {
    /// Qualifiers of every FROM item (sharded or not): an inner name shadows
    /// an outer one.
    names: Vec<String>,
    /// Indexes into [`Walk::bindings`] of this level's sharded tables.
    bindings: Vec<usize>,
    /// Indexes of the enclosing levels, innermost last.
    outer: Vec<usize>,
}

struct Walk<'m> {
    map: &'m ShardMap,
    bindings: Vec<Binding<'m>>,
    /// Per binding: the shards its own level's WHERE pins it to.
    pinned: Vec<Option<Vec<ShardId>>>,
    levels: Vec<Level>,
    /// The levels enclosing the point of the walk, innermost last.
    stack: Vec<usize>,
    /// CTE names visible at the point of the walk, one list per `WITH`.
    ctes: Vec<Vec<String>>,
    /// Same-level equalities of co-located keys.
    joins: Vec<(usize, usize)>,
    /// `(inner, outer)`: a subquery's key equal to an enclosing level's key.
    follows: Vec<(usize, usize)>,
    /// The level of the statement's own top-level SELECT.
    main: Option<usize>,
    /// How many queries enclose the point of the walk.
    depth: usize,
    opaque: bool,
}

/// Clones the subqueries directly inside a node (not those nested deeper).
fn immediate_subqueries<V: Visit>(node: &V) -> Vec<Query> {
    struct Immediate {
        depth: usize,
        found: Vec<Query>,
    }
    impl Visitor for Immediate {
        type Break = ();
        fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
            if self.depth == 0 {
                self.found.push(q.clone());
            }
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
    }
    let mut v = Immediate {
        depth: 0,
        found: Vec::new(),
    };
    let _ = node.visit(&mut v);
    v.found
}

/// Where the sharded tables of a query with subqueries or CTEs are read.
pub(super) fn reach(q: &Query, map: &ShardMap) -> Reach {
    let mut w = Walk {
        map,
        bindings: Vec::new(),
        pinned: Vec::new(),
        levels: Vec::new(),
        stack: Vec::new(),
        ctes: Vec::new(),
        joins: Vec::new(),
        follows: Vec::new(),
        main: None,
        depth: 0,
        opaque: false,
    };
    w.query(q);
    if w.bindings.is_empty() {
        return Reach::NoSharded;
    }
    if w.opaque {
        return Reach::Spread;
    }
    w.resolve()
}

impl<'m> Walk<'m> {
    fn query(&mut self, q: &Query) {
        self.depth += 1;
        let scopes = self.ctes.len();
        if let Some(with) = &q.with {
            let names: Vec<String> = with
                .cte_tables
                .iter()
                .map(|c| ident_name(&c.alias.name))
                .collect();
            // A recursive WITH sees all its names in every body; otherwise
            // each body sees the CTEs before it (and a table of its own name).
            self.ctes
                .push(if with.recursive { names } else { Vec::new() });
            for cte in &with.cte_tables {
                if matches!(
                    *cte.query.body,
                    SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_)
                ) {
                    self.opaque = true;
                }
                self.query(&cte.query);
                if !with.recursive {
                    if let Some(last) = self.ctes.last_mut() {
                        last.push(ident_name(&cte.alias.name));
                    }
                }
            }
        }
        if self.depth == 1 && matches!(q.body.as_ref(), SetExpr::Select(_)) {
            self.main = Some(self.levels.len());
        }
        self.set_expr(&q.body);
        for sub in immediate_subqueries(&q.order_by)
            .into_iter()
            .chain(immediate_subqueries(&q.limit_clause))
        {
            self.query(&sub);
        }
        self.ctes.truncate(scopes);
        self.depth -= 1;
    }

    fn set_expr(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Select(sel) => self.select(sel),
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left);
                self.set_expr(right);
            }
            SetExpr::Values(v) => {
                for sub in immediate_subqueries(v) {
                    self.query(&sub);
                }
            }
            _ => self.opaque = true,
        }
    }

    fn is_cte(&self, name: &ObjectName) -> bool {
        let (schema, table) = object_parts(name);
        schema.is_none() && self.ctes.iter().flatten().any(|c| *c == table)
    }

    fn factor(&mut self, level: usize, f: &TableFactor, on: &mut Vec<Expr>) {
        let alias_of =
            |a: &Option<sqlparser::ast::TableAlias>| a.as_ref().map(|a| ident_name(&a.name));
        match f {
            TableFactor::Table {
                name,
                alias,
                args: None,
                ..
            } => {
                let qualifier = alias_of(alias).unwrap_or_else(|| object_parts(name).1);
                self.levels[level].names.push(qualifier.clone());
                if self.is_cte(name) {
                    return;
                }
                if let Rel::Sharded(rule) = classify_rel(name, self.map, &HashSet::new()) {
                    self.bindings.push(Binding { rule, qualifier });
                    self.pinned.push(None);
                    self.levels[level].bindings.push(self.bindings.len() - 1);
                }
            }
            TableFactor::Table { name, alias, .. } => {
                let qualifier = alias_of(alias).unwrap_or_else(|| object_parts(name).1);
                self.levels[level].names.push(qualifier);
            }
            TableFactor::Derived { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::TableFunction { alias, .. } => {
                if let Some(a) = alias_of(alias) {
                    self.levels[level].names.push(a);
                }
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                if let Some(a) = alias_of(alias) {
                    self.levels[level].names.push(a);
                }
                self.joined_item(level, table_with_joins, on);
            }
            _ => self.opaque = true,
        }
    }

    fn joined_item(&mut self, level: usize, twj: &TableWithJoins, on: &mut Vec<Expr>) {
        self.factor(level, &twj.relation, on);
        for j in &twj.joins {
            self.factor(level, &j.relation, on);
        }
        let mut conds = Vec::new();
        join_conditions(twj.joins.iter(), &mut conds);
        on.extend(conds.into_iter().cloned());
    }

    fn select(&mut self, sel: &sqlparser::ast::Select) {
        let level = self.levels.len();
        self.levels.push(Level {
            names: Vec::new(),
            bindings: Vec::new(),
            outer: self.stack.clone(),
        });
        let mut on = Vec::new();
        for twj in &sel.from {
            self.joined_item(level, twj, &mut on);
        }
        // Pins and key equalities of this level.
        let own: Vec<Binding<'m>> = self.levels[level]
            .bindings
            .iter()
            .map(|&i| Binding {
                rule: self.bindings[i].rule,
                qualifier: self.bindings[i].qualifier.clone(),
            })
            .collect();
        for (k, &i) in self.levels[level].bindings.clone().iter().enumerate() {
            self.pinned[i] = key_shards(sel.selection.as_ref(), &own[k], &own, self.map);
        }
        let mut cs = Vec::new();
        for c in sel.selection.iter().chain(on.iter()) {
            conjuncts(c, &mut cs);
        }
        for c in cs {
            if let Expr::BinaryOp {
                left,
                op: BinaryOperator::Eq,
                right,
            } = c
            {
                self.equality(level, &own, left, right);
            }
        }
        // Subqueries anywhere in this SELECT (FROM, WHERE, the select list,
        // HAVING) see this level.
        self.stack.push(level);
        for sub in immediate_subqueries(sel) {
            self.query(&sub);
        }
        self.stack.pop();
    }

    /// Records `l = r` when both sides are keys of co-located tables.
    fn equality(&mut self, level: usize, own: &[Binding], l: &Expr, r: &Expr) {
        let (Some(a), Some(b)) = (self.key_ref(level, own, l), self.key_ref(level, own, r)) else {
            return;
        };
        if a.0 == b.0 || !co_located(self.bindings[a.0].rule, self.bindings[b.0].rule) {
            return;
        }
        match (a.1, b.1) {
            (true, true) => self.joins.push((a.0, b.0)),
            (true, false) => self.follows.push((a.0, b.0)),
            (false, true) => self.follows.push((b.0, a.0)),
            // Two outer keys compared inside a subquery restrict nothing
            // the walk relies on.
            (false, false) => {}
        }
    }

    /// The binding whose key `e` names, and whether it is of this level.
    /// Unqualified names count only for this level (an outer column could
    /// be shadowed by a column of this level the router cannot see).
    fn key_ref(&self, level: usize, own: &[Binding], e: &Expr) -> Option<(usize, bool)> {
        let e = match e {
            Expr::Nested(inner) => return self.key_ref(level, own, inner),
            e => e,
        };
        if let Some(k) = own.iter().position(|b| is_key_ref(e, b, own)) {
            return Some((self.levels[level].bindings[k], true));
        }
        let Expr::CompoundIdentifier(parts) = e else {
            return None;
        };
        let [.., q, c] = parts.as_slice() else {
            return None;
        };
        let (q, c) = (ident_name(q), ident_name(c));
        if self.levels[level].names.contains(&q) {
            return None;
        }
        for &l in self.levels[level].outer.iter().rev() {
            if !self.levels[l].names.contains(&q) {
                continue;
            }
            return self.levels[l]
                .bindings
                .iter()
                .copied()
                .find(|&i| self.bindings[i].qualifier == q && self.bindings[i].rule.key == c)
                .map(|i| (i, false));
        }
        None
    }

    /// The shards each binding is read on, levels outermost first.
    fn resolve(&self) -> Reach {
        if self.bindings.is_empty() {
            return Reach::NoSharded;
        }
        let mut shards: Vec<Option<Vec<ShardId>>> = vec![None; self.bindings.len()];
        for level in &self.levels {
            // Groups of this level joined on keys (positions in `level.bindings`).
            let n = level.bindings.len();
            let mut group: Vec<usize> = (0..n).collect();
            fn root(g: &[usize], mut x: usize) -> usize {
                while g[x] != x {
                    x = g[x];
                }
                x
            }
            let pos = |b: usize| level.bindings.iter().position(|&x| x == b);
            for &(a, b) in &self.joins {
                if let (Some(pa), Some(pb)) = (pos(a), pos(b)) {
                    let (ra, rb) = (root(&group, pa), root(&group, pb));
                    group[ra] = rb;
                }
            }
            for r in 0..n {
                let members: Vec<usize> = (0..n)
                    .filter(|&k| root(&group, k) == r)
                    .map(|k| level.bindings[k])
                    .collect();
                if members.is_empty() {
                    continue;
                }
                let got = if members.iter().any(|&m| self.pinned[m].is_some()) {
                    let pins: Vec<ShardId> = members
                        .iter()
                        .filter_map(|&m| self.pinned[m].as_ref())
                        .flatten()
                        .copied()
                        .collect();
                    Some(pins)
                } else {
                    // Unpinned: the rows needed follow enclosing rows, when
                    // the group is correlated on keys with them.
                    self.follows
                        .iter()
                        .filter(|(i, _)| members.contains(i))
                        .find_map(|(_, o)| shards[*o].clone())
                };
                for m in &members {
                    shards[*m] = got.clone();
                }
            }
        }
        let mut all: Vec<ShardId> = Vec::new();
        let mut unpinned = false;
        for s in &shards {
            match s {
                Some(s) => all.extend(s.iter().copied()),
                None => unpinned = true,
            }
        }
        all.sort();
        all.dedup();
        match all.as_slice() {
            [one] if !unpinned => Reach::One(*one),
            _ if self.local() => Reach::Local,
            _ => Reach::Spread,
        }
    }

    /// Whether every sharded table outside the top-level FROM list follows,
    /// through key correlations, a table of the top-level FROM list.
    fn local(&self) -> bool {
        let Some(main) = self.main else {
            return false;
        };
        let mut attached: Vec<bool> = vec![false; self.bindings.len()];
        for &b in &self.levels[main].bindings {
            attached[b] = true;
        }
        for (i, level) in self.levels.iter().enumerate() {
            if i == main {
                continue;
            }
            // A level's tables joined on keys share the attachment of any
            // of them (joins are recorded both ways by the walk).
            let mut changed = true;
            while changed {
                changed = false;
                for &b in &level.bindings {
                    if attached[b] {
                        continue;
                    }
                    let follows = self.follows.iter().any(|&(x, o)| x == b && attached[o]);
                    let joined = self.joins.iter().any(|&(x, y)| {
                        (x == b && attached[y] && level.bindings.contains(&y))
                            || (y == b && attached[x] && level.bindings.contains(&x))
                    });
                    if follows || joined {
                        attached[b] = true;
                        changed = true;
                    }
                }
            }
        }
        attached.iter().all(|a| *a)
    }
}
