//! Planning a grouped cross-shard `SELECT` (aggregates, `GROUP BY`,
//! `HAVING`): the partial aggregates each shard computes per group and the
//! outputs and `HAVING` condition that combine them.

use super::*;

/// Builds the shards' select list and the outputs that combine it.
struct GroupPlanner<'a> {
    bindings: &'a [Binding<'a>],
    group_exprs: Vec<Expr>,
    /// Shard select list.
    cols: Vec<SelectItem>,
    outputs: Vec<Output>,
    /// Output index of each aggregate call or grouped expression already made.
    made: Vec<(Expr, usize)>,
}

impl GroupPlanner<'_> {
    fn made_for(&self, e: &Expr) -> Option<usize> {
        let e = strip(e);
        self.made.iter().find(|(x, _)| x == e).map(|(_, i)| *i)
    }

    fn col(&mut self, expr: Expr, alias: Ident) -> usize {
        self.cols.push(SelectItem::ExprWithAlias { expr, alias });
        self.cols.len() - 1
    }

    /// An output for an aggregate call: its partial column(s) and combiner.
    /// `reuse`: an equal call already made will do (HAVING, ORDER BY); each
    /// select-list item gets an output of its own.
    fn agg(
        &mut self,
        e: &Expr,
        alias: Option<&Ident>,
        reuse: bool,
    ) -> Result<Option<usize>, RouteError> {
        let Some(a) = aggregate(e, self.bindings)? else {
            return Ok(None);
        };
        if reuse {
            if let Some(i) = self.made_for(e) {
                return Ok(Some(i));
            }
        }
        let name = alias
            .cloned()
            .unwrap_or_else(|| quoted(&object_parts(&a.call.name).1));
        let partial = |fname: &str| {
            let mut f = a.call.clone();
            f.name = ObjectName::from(vec![Ident::new(fname)]);
            Expr::Function(f)
        };
        let out = match a.func {
            AggFunc::Avg => {
                let col = self.col(partial("sum"), name);
                let count = self.col(partial("count"), quoted("pieskieo_count"));
                Output::Agg {
                    func: AggFunc::Avg,
                    col,
                    count: Some(count),
                }
            }
            func => {
                let col = self.col(strip(e).clone(), name);
                Output::Agg {
                    func,
                    col,
                    count: None,
                }
            }
        };
        self.outputs.push(out);
        let i = self.outputs.len() - 1;
        self.made.push((strip(e).clone(), i));
        Ok(Some(i))
    }

    /// An output passing a grouped expression (or constant) through.
    fn pass(&mut self, e: &Expr, alias: Option<&Ident>, reuse: bool) -> Option<usize> {
        let e = strip(e);
        if !self.group_exprs.iter().any(|g| strip(g) == e) && !constant(e) {
            return None;
        }
        if reuse {
            if let Some(i) = self.made_for(e) {
                return Some(i);
            }
        }
        let col = match alias {
            Some(a) => self.col(e.clone(), a.clone()),
            None => {
                self.cols.push(SelectItem::UnnamedExpr(e.clone()));
                self.cols.len() - 1
            }
        };
        self.outputs.push(Output::Pass(col));
        let i = self.outputs.len() - 1;
        self.made.push((e.clone(), i));
        Some(i)
    }

    /// An output for an expression in HAVING or ORDER BY (hidden if new).
    fn operand(&mut self, e: &Expr, clause: &str) -> Result<usize, RouteError> {
        if let Some(i) = self.agg(e, None, true)? {
            return Ok(i);
        }
        if let Some(i) = self.pass(e, None, true) {
            return Ok(i);
        }
        if has_aggregate(e) {
            return refuse(format!("expressions over aggregates in {clause} ({e})"));
        }
        refuse(format!(
            "{clause} expression {e}, which is neither grouped nor an aggregate,"
        ))
    }

    fn cond(&mut self, e: &Expr) -> Result<Cond, RouteError> {
        Ok(match e {
            Expr::Nested(inner) => self.cond(inner)?,
            Expr::BinaryOp { left, op, right } => {
                let cmp = match op {
                    BinaryOperator::And => {
                        return Ok(Cond::And(
                            Box::new(self.cond(left)?),
                            Box::new(self.cond(right)?),
                        ))
                    }
                    BinaryOperator::Or => {
                        return Ok(Cond::Or(
                            Box::new(self.cond(left)?),
                            Box::new(self.cond(right)?),
                        ))
                    }
                    BinaryOperator::Eq => CmpOp::Eq,
                    BinaryOperator::NotEq => CmpOp::Ne,
                    BinaryOperator::Lt => CmpOp::Lt,
                    BinaryOperator::LtEq => CmpOp::Le,
                    BinaryOperator::Gt => CmpOp::Gt,
                    BinaryOperator::GtEq => CmpOp::Ge,
                    other => return refuse(format!("operator {other} in HAVING")),
                };
                Cond::Cmp(cmp, Box::new(self.cond(left)?), Box::new(self.cond(right)?))
            }
            Expr::UnaryOp {
                op: UnaryOperator::Not,
                expr,
            } => Cond::Not(Box::new(self.cond(expr)?)),
            Expr::IsNull(x) => Cond::IsNull(Box::new(self.cond(x)?), false),
            Expr::IsNotNull(x) => Cond::IsNull(Box::new(self.cond(x)?), true),
            Expr::Between {
                expr,
                negated,
                low,
                high,
            } => {
                let x = self.cond(expr)?;
                let both = Cond::And(
                    Box::new(Cond::Cmp(
                        CmpOp::Ge,
                        Box::new(x.clone()),
                        Box::new(self.cond(low)?),
                    )),
                    Box::new(Cond::Cmp(
                        CmpOp::Le,
                        Box::new(x),
                        Box::new(self.cond(high)?),
                    )),
                );
                if *negated {
                    Cond::Not(Box::new(both))
                } else {
                    both
                }
            }
            Expr::Value(v) => Cond::Lit(match &v.value {
                Value::Null => Lit::Null,
                Value::Boolean(b) => Lit::Bool(*b),
                Value::Number(n, _) => Lit::Number(n.clone()),
                Value::SingleQuotedString(s) => Lit::Text(s.clone()),
                other => return refuse(format!("literal {other} in HAVING")),
            }),
            Expr::UnaryOp {
                op: UnaryOperator::Minus,
                expr,
            } if number(expr).is_some() => Cond::Lit(Lit::Number(format!(
                "-{}",
                number(expr).unwrap_or_default()
            ))),
            other => Cond::Col(self.operand(other, "HAVING")?),
        })
    }
}

/// Aggregates and groups: shards aggregate their own rows per group, the
/// proxy combines the groups, then applies HAVING, DISTINCT, ORDER BY and
/// LIMIT/OFFSET.
pub(super) fn plan_groups(
    q: &Query,
    sel: &Select,
    order: &[&sqlparser::ast::OrderByExpr],
    group_by: &[&Expr],
    limits: Limits,
    distinct: bool,
    bindings: &[Binding],
) -> Result<MergePlan, RouteError> {
    let Some(items) = items(sel) else {
        return refuse("* together with aggregates or GROUP BY");
    };
    let mut group_exprs = Vec::new();
    for g in group_by {
        match output_ref(g, &items)? {
            Some(i) if has_aggregate(items[i].0) => {
                return Err(RouteError::Unsupported(format!(
                    "aggregate functions are not allowed in GROUP BY ({})",
                    items[i].0
                )))
            }
            Some(i) => group_exprs.push(strip(items[i].0).clone()),
            None => group_exprs.push(strip(g).clone()),
        }
    }
    let mut p = GroupPlanner {
        bindings,
        group_exprs: group_exprs.clone(),
        cols: Vec::new(),
        outputs: Vec::new(),
        made: Vec::new(),
    };
    for (e, alias) in &items {
        if p.agg(e, *alias, false)?.is_some() {
            continue;
        }
        if p.pass(e, *alias, false).is_none() {
            if has_aggregate(e) {
                return refuse(format!("expressions over aggregates ({e})"));
            }
            return Err(RouteError::Unsupported(format!(
                "column {e} must appear in the GROUP BY clause or be used in an aggregate function"
            )));
        }
    }
    let visible = p.outputs.len();
    // Every grouping expression must be a shard column to group on.
    let mut keys = Vec::new();
    for g in &group_exprs {
        let i = match p.made_for(g) {
            Some(i) => i,
            None => p.pass(g, None, true).unwrap_or(0),
        };
        if let Output::Pass(c) = p.outputs[i] {
            keys.push(c);
        }
    }
    let having = match &sel.having {
        Some(h) => Some(p.cond(h)?),
        None => None,
    };
    let mut sort = Vec::new();
    for o in order {
        let i = match output_ref(&o.expr, &items)? {
            Some(i) => i,
            None => match items.iter().position(|(e, _)| strip(e) == strip(&o.expr)) {
                Some(i) => i,
                None => p.operand(&o.expr, "ORDER BY")?,
            },
        };
        sort.push(sort_key(i, o));
    }
    let mut shard_q = q.clone();
    shard_q.order_by = None;
    shard_q.limit_clause = None;
    shard_q.fetch = None;
    if let SetExpr::Select(s) = shard_q.body.as_mut() {
        s.projection = p.cols;
        s.distinct = None;
        s.having = None;
        s.group_by = GroupByExpr::Expressions(group_exprs, Vec::new());
    }
    Ok(MergePlan {
        sql: shard_q.to_string(),
        shape: Shape::Groups {
            keys,
            outputs: p.outputs,
            visible,
            having,
        },
        order: sort,
        offset: limits.offset,
        write: Writes::No,
        limit: limits.limit,
        distinct,
        params: Vec::new(),
    })
}
