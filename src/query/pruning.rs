//! Turning SQL filters into Iceberg scan predicates.
//!
//! `event_day` is a virtual column (the UTC date of `event_timestamp`), so
//! Iceberg knows nothing of it. Filters on it are rewritten into
//! `event_timestamp` ranges, which Iceberg projects through the
//! `day(event_timestamp)` partition transform to skip whole days of files.
//! Every rewrite yields a *superset* of the matching rows: DataFusion still
//! applies the original filter exactly, so pruning can only skip, never drop.

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator, expr::InList};
use iceberg::expr::{Predicate, Reference};
use iceberg::spec::Datum;

use crate::schema::col;

const DAY_MICROS: i64 = 86_400_000_000;

/// How a literal constrains `event_day`.
#[derive(Debug, Clone, Copy)]
enum DayLiteral {
    /// A date: exact day number since the epoch.
    Date(i64),
    /// A timestamp in µs compared with `CAST(event_day AS TIMESTAMP)`.
    Instant(i64),
}

fn is_event_day(e: &Expr) -> bool {
    match e {
        Expr::Column(c) => c.name == col::EVENT_DAY,
        Expr::Cast(c) => is_event_day(&c.expr),
        Expr::TryCast(c) => is_event_day(&c.expr),
        _ => false,
    }
}

fn day_literal(e: &Expr) -> Option<DayLiteral> {
    let Expr::Literal(v, _) = e else { return None };
    let micros = |v: i64, per_second: i64| -> Option<i64> {
        if per_second >= 1_000_000 {
            Some(v.div_euclid(per_second / 1_000_000))
        } else {
            v.checked_mul(1_000_000 / per_second)
        }
    };
    match v {
        ScalarValue::Date32(Some(d)) => Some(DayLiteral::Date(*d as i64)),
        ScalarValue::Date64(Some(ms)) => Some(DayLiteral::Instant(ms.checked_mul(1000)?)),
        ScalarValue::TimestampSecond(Some(v), _) => micros(*v, 1).map(DayLiteral::Instant),
        ScalarValue::TimestampMillisecond(Some(v), _) => micros(*v, 1_000).map(DayLiteral::Instant),
        ScalarValue::TimestampMicrosecond(Some(v), _) => Some(DayLiteral::Instant(*v)),
        ScalarValue::TimestampNanosecond(Some(v), _) => {
            micros(*v, 1_000_000_000).map(DayLiteral::Instant)
        }
        _ => None,
    }
}

fn ts() -> Reference {
    Reference::new(col::EVENT_TIMESTAMP)
}

fn at_least(day: i64) -> Predicate {
    ts().greater_than_or_equal_to(Datum::timestamptz_micros(day * DAY_MICROS))
}

fn before(day: i64) -> Predicate {
    ts().less_than(Datum::timestamptz_micros(day * DAY_MICROS))
}

/// `event_day <op> literal` as an `event_timestamp` range (superset).
fn compare(op: Operator, lit: DayLiteral) -> Option<Predicate> {
    use Operator::*;
    match lit {
        DayLiteral::Date(d) => match op {
            Eq => Some(at_least(d).and(before(d + 1))),
            GtEq => Some(at_least(d)),
            Gt => Some(at_least(d + 1)),
            Lt => Some(before(d)),
            LtEq => Some(before(d + 1)),
            _ => None,
        },
        // The row's day start D is compared with an instant t; D lies on a
        // midnight, so only t's own day bounds it.
        DayLiteral::Instant(t) => {
            let day = t.div_euclid(DAY_MICROS);
            match op {
                Eq => Some(at_least(day).and(before(day + 1))),
                GtEq | Gt => Some(at_least(day)),
                Lt | LtEq => Some(before(day + 1)),
                _ => None,
            }
        }
    }
}

fn flip(op: Operator) -> Operator {
    match op {
        Operator::Lt => Operator::Gt,
        Operator::LtEq => Operator::GtEq,
        Operator::Gt => Operator::Lt,
        Operator::GtEq => Operator::LtEq,
        other => other,
    }
}

/// True if the expression mentions `event_day` anywhere (such filters must
/// not be handed to Iceberg as-is: the table has no such column).
pub fn references_event_day(e: &Expr) -> bool {
    e.column_refs().iter().any(|c| c.name == col::EVENT_DAY)
}

/// True if the filter involves `event_day` and no other column, and is not
/// volatile: such a filter has one answer per data file (each file holds a
/// single day), so it can be decided from partition values alone.
pub fn only_event_day(e: &Expr) -> bool {
    let columns = e.column_refs();
    !columns.is_empty() && columns.iter().all(|c| c.name == col::EVENT_DAY) && !e.is_volatile()
}

/// An `event_timestamp` predicate implied by a filter on `event_day`.
pub fn event_day_predicate(e: &Expr) -> Option<Predicate> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => match (event_day_predicate(left), event_day_predicate(right)) {
                (Some(l), Some(r)) => Some(l.and(r)),
                (l, r) => l.or(r),
            },
            Operator::Or => Some(event_day_predicate(left)?.or(event_day_predicate(right)?)),
            op if is_event_day(left) => compare(*op, day_literal(right)?),
            op if is_event_day(right) => compare(flip(*op), day_literal(left)?),
            _ => None,
        },
        Expr::Between(Between {
            expr,
            negated: false,
            low,
            high,
        }) if is_event_day(expr) => {
            let lo = compare(Operator::GtEq, day_literal(low)?)?;
            let hi = compare(Operator::LtEq, day_literal(high)?)?;
            Some(lo.and(hi))
        }
        Expr::InList(InList {
            expr,
            list,
            negated: false,
        }) if is_event_day(expr) => list
            .iter()
            .map(|v| compare(Operator::Eq, day_literal(v)?))
            .collect::<Option<Vec<_>>>()?
            .into_iter()
            .reduce(Predicate::or),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::logical_expr::{col as c, lit};

    fn date(s: &str) -> Expr {
        let d = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        let days = (d - chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap()).num_days();
        lit(ScalarValue::Date32(Some(days as i32)))
    }

    #[test]
    fn day_comparisons_become_ranges() {
        let p = event_day_predicate(&c("event_day").gt_eq(date("2026-11-01"))).unwrap();
        assert_eq!(p.to_string(), "event_timestamp >= 2026-11-01 00:00:00 UTC");
        let p = event_day_predicate(&c("event_day").eq(date("2026-11-01"))).unwrap();
        assert!(p.to_string().contains("< 2026-11-02 00:00:00 UTC"), "{p}");
        let p = event_day_predicate(&date("2026-11-01").gt(c("event_day"))).unwrap();
        assert_eq!(p.to_string(), "event_timestamp < 2026-11-01 00:00:00 UTC");
        let between = c("event_day").between(date("2026-11-01"), date("2026-11-03"));
        let p = event_day_predicate(&between).unwrap();
        assert!(p.to_string().contains("< 2026-11-04"), "{p}");
        let inlist = c("event_day").in_list(vec![date("2026-11-01"), date("2026-11-05")], false);
        assert!(event_day_predicate(&inlist).is_some());
        assert!(event_day_predicate(&c("event_day").not_eq(date("2026-11-01"))).is_none());
        assert!(event_day_predicate(&c("model_name").eq(lit("x"))).is_none());
        // OR with an unprunable side cannot prune.
        let or = c("event_day")
            .eq(date("2026-11-01"))
            .or(c("model_name").eq(lit("x")));
        assert!(event_day_predicate(&or).is_none());
    }
}
