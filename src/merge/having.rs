//! `HAVING` conditions evaluated on merged group rows.

use std::cmp::Ordering;

use bytes::Bytes;

use super::decimal::Numeric;
use super::run::read_val;
use super::value::{compare, decode, Kind, Val};
use super::wire::{merge_error, Row};
use super::{CmpOp, Cond, Lit};
use crate::error::SqlState;

/// Evaluates a HAVING condition with SQL's three-valued logic.
pub(super) fn eval(
    c: &Cond,
    row: &Row,
    kinds: &[Kind],
    bytewise: bool,
) -> Result<Option<bool>, Bytes> {
    Ok(match c {
        Cond::And(a, b) => match (
            eval(a, row, kinds, bytewise)?,
            eval(b, row, kinds, bytewise)?,
        ) {
            (Some(false), _) | (_, Some(false)) => Some(false),
            (Some(true), Some(true)) => Some(true),
            _ => None,
        },
        Cond::Or(a, b) => match (
            eval(a, row, kinds, bytewise)?,
            eval(b, row, kinds, bytewise)?,
        ) {
            (Some(true), _) | (_, Some(true)) => Some(true),
            (Some(false), Some(false)) => Some(false),
            _ => None,
        },
        Cond::Not(a) => eval(a, row, kinds, bytewise)?.map(|v| !v),
        Cond::IsNull(a, negated) => {
            let null = match a.as_ref() {
                Cond::Col(i) => row.get(*i).is_none_or(Option::is_none),
                Cond::Lit(l) => *l == Lit::Null,
                other => eval(other, row, kinds, bytewise)?.is_none(),
            };
            Some(null != *negated)
        }
        Cond::Col(_) | Cond::Lit(_) => match operand(c, row, kinds, None)? {
            None => None,
            Some(Val::Bool(b)) => Some(b),
            Some(_) => {
                return Err(merge_error(
                    SqlState::DATATYPE_MISMATCH,
                    "argument of HAVING must be type boolean",
                ))
            }
        },
        Cond::Cmp(op, a, b) => {
            let ka = kind_of(a, kinds);
            let kb = kind_of(b, kinds);
            let k = ka.or(kb);
            if k.is_some_and(Kind::is_text) && !bytewise && !matches!(op, CmpOp::Eq | CmpOp::Ne) {
                return Err(merge_error(
                    SqlState::FEATURE_NOT_SUPPORTED,
                    "comparing text in HAVING across shards needs the C collation",
                ));
            }
            let (Some(x), Some(y)) = (operand(a, row, kinds, kb)?, operand(b, row, kinds, ka)?)
            else {
                return Ok(None);
            };
            let o = compare(&x, &y);
            Some(match op {
                CmpOp::Eq => o == Ordering::Equal,
                CmpOp::Ne => o != Ordering::Equal,
                CmpOp::Lt => o == Ordering::Less,
                CmpOp::Le => o != Ordering::Greater,
                CmpOp::Gt => o == Ordering::Greater,
                CmpOp::Ge => o != Ordering::Less,
            })
        }
    })
}

fn kind_of(c: &Cond, kinds: &[Kind]) -> Option<Kind> {
    match c {
        Cond::Col(i) => kinds.get(*i).copied(),
        _ => None,
    }
}

/// A comparison operand; a string literal takes the type of the other side.
fn operand(c: &Cond, row: &Row, kinds: &[Kind], other: Option<Kind>) -> Result<Option<Val>, Bytes> {
    match c {
        Cond::Col(i) => read_val(
            kinds.get(*i).copied().unwrap_or(Kind::Opaque),
            &row.get(*i).cloned().flatten(),
        ),
        Cond::Lit(Lit::Null) => Ok(None),
        Cond::Lit(Lit::Bool(b)) => Ok(Some(Val::Bool(*b))),
        Cond::Lit(Lit::Number(n)) => {
            Numeric::parse(n).map(|n| Some(Val::Num(n))).ok_or_else(|| {
                merge_error(
                    SqlState::INVALID_TEXT_REPRESENTATION,
                    &format!("invalid number {n}"),
                )
            })
        }
        Cond::Lit(Lit::Text(t)) => {
            decode(other.unwrap_or(Kind::Text { padded: false }), t.as_bytes())
                .map(Some)
                .map_err(|e| merge_error(SqlState::INVALID_TEXT_REPRESENTATION, &e.0))
        }
        other => Ok(eval(other, row, kinds, true)?.map(Val::Bool)),
    }
}
