//! Aggregates with `GROUP BY`: the accumulators that combine shards' partial
//! aggregates, and the group merge that buffers, filters and sorts them.

use std::cmp::Ordering;
use std::collections::{HashMap, HashSet};

use bytes::Bytes;
use tokio::io::AsyncWrite;

use super::decimal::{Decimal, Numeric};
use super::having::eval;
use super::run::{
    check_groupable, check_ordered, cmp_keys, next_row, read_val, row_key, send, sort_values,
    Outcome, RunOptions, Sink, Stream,
};
use super::value::{compare, format_float, oid, Kind, Val};
use super::wire::{merge_error, parse_row, Field, Row, Writer};
use super::{AggFunc, MergePlan, Output, Shape};
use crate::backend::ServerConn;
use crate::error::SqlState;
use crate::executor::ExecError;

/// One aggregate being combined across shards' partial rows.
pub(super) enum Acc {
    Count(i128),
    SumInt(Option<i128>),
    SumNum(Option<Numeric>),
    SumFloat(Option<f64>),
    Best(Option<(Val, Bytes)>),
    AvgNum { sum: Option<Numeric>, n: i128 },
    AvgFloat { sum: Option<f64>, n: i128 },
    Bool(Option<bool>),
}

fn numeric_field(name: &[u8]) -> Field {
    Field {
        name: name.to_vec(),
        table: 0,
        attnum: 0,
        type_oid: oid::NUMERIC,
        typlen: -1,
        typmod: -1,
        format: 0,
    }
}

/// The output column an aggregate makes from its partial column, and the
/// starting state of its accumulator.
fn agg_setup(func: AggFunc, partial: &Field, bytewise: bool) -> Result<(Field, Kind, Acc), Bytes> {
    let k = Kind::of(partial.type_oid);
    let unsupported = || {
        merge_error(
            SqlState::FEATURE_NOT_SUPPORTED,
            &format!(
                "{}() over values of type OID {} across shards is not supported (integers, numeric and double precision are)",
                func.name(),
                partial.type_oid
            ),
        )
    };
    let plain = |acc| Ok((partial.clone(), k, acc));
    match func {
        AggFunc::Count => plain(Acc::Count(0)),
        AggFunc::Sum => match (k, partial.type_oid) {
            (Kind::Int, _) => plain(Acc::SumInt(None)),
            (Kind::Numeric, _) => plain(Acc::SumNum(None)),
            (Kind::Float, oid::FLOAT8) => plain(Acc::SumFloat(None)),
            _ => Err(unsupported()),
        },
        AggFunc::Avg => match (k, partial.type_oid) {
            (Kind::Int | Kind::Numeric, _) => Ok((
                numeric_field(&partial.name),
                Kind::Numeric,
                Acc::AvgNum { sum: None, n: 0 },
            )),
            (Kind::Float, oid::FLOAT8) => plain(Acc::AvgFloat { sum: None, n: 0 }),
            _ => Err(unsupported()),
        },
        AggFunc::Min | AggFunc::Max => {
            check_ordered(partial, bytewise, func.name())?;
            plain(Acc::Best(None))
        }
        AggFunc::BoolAnd | AggFunc::BoolOr if k == Kind::Bool => plain(Acc::Bool(None)),
        AggFunc::BoolAnd | AggFunc::BoolOr => Err(unsupported()),
    }
}

fn out_of_range() -> Bytes {
    merge_error(SqlState::NUMERIC_VALUE_OUT_OF_RANGE, "bigint out of range")
}

impl Acc {
    fn add(
        &mut self,
        func: AggFunc,
        kind: Kind,
        v: &Option<Bytes>,
        count: Option<&Option<Bytes>>,
    ) -> Result<(), Bytes> {
        let val = read_val(kind, v)?;
        let n = match count {
            Some(c) => match read_val(Kind::Int, c)? {
                Some(Val::Int(n)) => n,
                _ => 0,
            },
            None => 0,
        };
        match (self, val) {
            (Acc::Count(total), Some(Val::Int(x))) => *total += x,
            (Acc::SumInt(s), Some(Val::Int(x))) => {
                *s = Some(s.unwrap_or(0).checked_add(x).ok_or_else(out_of_range)?)
            }
            (Acc::SumNum(s), Some(Val::Num(x))) => {
                *s = Some(s.take().map_or(x.clone(), |a| a.add(&x)))
            }
            (Acc::SumFloat(s), Some(Val::Float(x))) => *s = Some(s.unwrap_or(0.0) + x),
            (Acc::Best(best), Some(x)) => {
                let better = match best {
                    None => true,
                    Some((b, _)) => {
                        let o = compare(&x, b);
                        if func == AggFunc::Min {
                            o == Ordering::Less
                        } else {
                            o == Ordering::Greater
                        }
                    }
                };
                if better {
                    *best = Some((x, v.clone().unwrap_or_default()));
                }
            }
            (Acc::AvgNum { sum, n: total }, Some(x)) => {
                let x = match x {
                    Val::Int(i) => Numeric::Finite(Decimal::from_int(i)),
                    Val::Num(d) => d,
                    _ => return Ok(()),
                };
                *sum = Some(sum.take().map_or(x.clone(), |a| a.add(&x)));
                *total += n;
            }
            (Acc::AvgFloat { sum, n: total }, Some(Val::Float(x))) => {
                *sum = Some(sum.unwrap_or(0.0) + x);
                *total += n;
            }
            (Acc::Bool(b), Some(Val::Bool(x))) => {
                *b = Some(match (*b, func) {
                    (None, _) => x,
                    (Some(y), AggFunc::BoolAnd) => x && y,
                    (Some(y), _) => x || y,
                })
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(&self) -> Result<Option<Bytes>, Bytes> {
        let text = |s: String| Some(Bytes::from(s));
        Ok(match self {
            Acc::Count(n) => text(n.to_string()),
            Acc::SumInt(s) => match s {
                Some(v) if i64::try_from(*v).is_err() => return Err(out_of_range()),
                Some(v) => text(v.to_string()),
                None => None,
            },
            Acc::SumNum(s) => s.as_ref().map(|v| Bytes::from(v.to_string())),
            Acc::SumFloat(s) => s.map(|v| Bytes::from(format_float(v))),
            Acc::Best(b) => b.as_ref().map(|(_, raw)| raw.clone()),
            Acc::AvgNum { sum, n } => match (sum, n) {
                (Some(s), n) if *n > 0 => s.div_count(*n).map(|v| Bytes::from(v.to_string())),
                _ => None,
            },
            Acc::AvgFloat { sum, n } => match (sum, n) {
                (Some(s), n) if *n > 0 => text(format_float(s / *n as f64)),
                _ => None,
            },
            Acc::Bool(b) => b.map(|v| Bytes::from_static(if v { b"t" } else { b"f" })),
        })
    }
}

struct Group {
    first: Row,
    accs: Vec<Acc>,
}

/// Output columns and kinds, group-key kinds, accumulators' first state.
pub(super) type Setup = (Vec<Field>, Vec<Kind>, Vec<Kind>, Vec<Acc>);

pub(super) fn groups_setup(
    plan: &MergePlan,
    fields: &[Field],
    bytewise: bool,
) -> Result<Setup, Bytes> {
    let Shape::Groups { keys, outputs, .. } = &plan.shape else {
        return Err(merge_error(SqlState::INTERNAL_ERROR, "not a group merge"));
    };
    let missing = || {
        merge_error(
            SqlState::PROTOCOL_VIOLATION,
            "shard result lacks a merge column",
        )
    };
    let mut key_kinds = Vec::new();
    for &k in keys {
        key_kinds.push(check_groupable(fields.get(k).ok_or_else(missing)?)?);
    }
    let (mut ofields, mut okinds, mut accs) = (Vec::new(), Vec::new(), Vec::new());
    for out in outputs {
        match out {
            Output::Pass(c) => {
                let f = fields.get(*c).ok_or_else(missing)?;
                okinds.push(Kind::of(f.type_oid));
                ofields.push(f.clone());
            }
            Output::Agg { func, col, .. } => {
                let (f, k, acc) =
                    agg_setup(*func, fields.get(*col).ok_or_else(missing)?, bytewise)?;
                ofields.push(f);
                okinds.push(k);
                accs.push(acc);
            }
        }
    }
    Ok((ofields, okinds, key_kinds, accs))
}

#[allow(clippy::too_many_arguments)]
pub(super) async fn groups<W: AsyncWrite + Unpin>(
    conns: &mut [&mut ServerConn],
    streams: &mut [Stream],
    plan: &MergePlan,
    fields: &[Field],
    opts: &RunOptions<'_>,
    o: &mut Outcome,
    out: &mut W,
) -> Result<Result<u64, Bytes>, ExecError> {
    let bytewise = opts.bytewise;
    let Shape::Groups {
        keys,
        outputs,
        visible,
        having,
    } = &plan.shape
    else {
        return Ok(Ok(0));
    };
    let (ofields, okinds, key_kinds, template) = match groups_setup(plan, fields, bytewise) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let (desc, writer) = match Writer::new(&ofields[..*visible], opts.formats) {
        Ok(x) => x,
        Err(e) => return Ok(Err(e)),
    };
    let fresh = || -> Vec<Acc> {
        template
            .iter()
            .map(|a| match a {
                Acc::Count(_) => Acc::Count(0),
                Acc::SumInt(_) => Acc::SumInt(None),
                Acc::SumNum(_) => Acc::SumNum(None),
                Acc::SumFloat(_) => Acc::SumFloat(None),
                Acc::Best(_) => Acc::Best(None),
                Acc::AvgNum { .. } => Acc::AvgNum { sum: None, n: 0 },
                Acc::AvgFloat { .. } => Acc::AvgFloat { sum: None, n: 0 },
                Acc::Bool(_) => Acc::Bool(None),
            })
            .collect()
    };
    let partial_kinds: Vec<Kind> = fields.iter().map(|f| Kind::of(f.type_oid)).collect();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut all: Vec<Group> = Vec::new();
    for (c, s) in conns.iter_mut().zip(streams.iter_mut()) {
        while let Some(f) = next_row(c, s, o, out).await? {
            let Some(row) = parse_row(&f) else {
                return Ok(Err(merge_error(
                    SqlState::PROTOCOL_VIOLATION,
                    "malformed DataRow from a shard",
                )));
            };
            let key_vals: Vec<Option<Bytes>> = keys
                .iter()
                .map(|&k| row.get(k).cloned().flatten())
                .collect();
            let key = match row_key(&key_vals, &key_kinds) {
                Ok(k) => k,
                Err(e) => return Ok(Err(e)),
            };
            let g = *index.entry(key).or_insert_with(|| {
                all.push(Group {
                    first: row.clone(),
                    accs: fresh(),
                });
                all.len() - 1
            });
            let group = &mut all[g];
            let mut a = 0;
            for out in outputs {
                if let Output::Agg { func, col, count } = out {
                    let v = row.get(*col).cloned().flatten();
                    let n = count.map(|c| row.get(c).cloned().flatten());
                    if let Err(e) = group.accs[a].add(*func, partial_kinds[*col], &v, n.as_ref()) {
                        return Ok(Err(e));
                    }
                    a += 1;
                }
            }
        }
    }
    if o.error.is_some() {
        return Ok(Ok(0));
    }
    // Final rows, filtered by HAVING.
    let mut finals: Vec<Row> = Vec::with_capacity(all.len());
    for g in &all {
        let mut row = Vec::with_capacity(outputs.len());
        let mut a = 0;
        for out in outputs {
            match out {
                Output::Pass(c) => row.push(g.first.get(*c).cloned().flatten()),
                Output::Agg { .. } => {
                    match g.accs[a].finish() {
                        Ok(v) => row.push(v),
                        Err(e) => return Ok(Err(e)),
                    }
                    a += 1;
                }
            }
        }
        if let Some(h) = having {
            match eval(h, &row, &okinds, bytewise) {
                Ok(Some(true)) => {}
                Ok(_) => continue,
                Err(e) => return Ok(Err(e)),
            }
        }
        finals.push(row);
    }
    if !plan.order.is_empty() {
        let mut sort_cols = Vec::new();
        for k in &plan.order {
            match ofields
                .get(k.col)
                .ok_or(())
                .map(|f| check_ordered(f, bytewise, "ORDER BY"))
            {
                Ok(Ok(_)) => sort_cols.push((k.col, okinds[k.col])),
                Ok(Err(e)) => return Ok(Err(e)),
                Err(()) => {
                    return Ok(Err(merge_error(
                        SqlState::PROTOCOL_VIOLATION,
                        "sort key missing",
                    )))
                }
            }
        }
        let mut keyed = Vec::with_capacity(finals.len());
        for r in finals {
            match sort_values(&r, &sort_cols) {
                Ok(k) => keyed.push((k, r)),
                Err(e) => return Ok(Err(e)),
            }
        }
        keyed.sort_by(|a, b| cmp_keys(&a.0, &b.0, &plan.order));
        finals = keyed.into_iter().map(|(_, r)| r).collect();
    }
    let mut sink = Sink {
        distinct: plan
            .distinct
            .then(|| (okinds[..*visible].to_vec(), HashSet::new())),
        skip: plan.offset,
        left: plan.limit,
        sent: 0,
    };
    let mut batch = Vec::new();
    for r in &finals {
        match sink.admit(&r[..*visible]) {
            Ok(true) => match writer.row(&r[..*visible]) {
                Ok(b) => batch.push(b),
                Err(e) => return Ok(Err(e)),
            },
            Ok(false) => {}
            Err(e) => return Ok(Err(e)),
        }
        if sink.full() {
            break;
        }
    }
    if !opts.executed {
        send(out, &desc).await?;
    }
    for b in batch {
        send(out, &b).await?;
    }
    Ok(Ok(sink.sent))
}
