//! DataFusion filters as Iceberg predicates, for skipping files and row
//! groups by their column statistics.
//!
//! A predicate only prunes, so it may be weaker than the filter but never
//! stronger: every row the filter keeps must satisfy it, or rows silently
//! disappear from answers. Hence the narrow shape of what is converted:
//! comparisons of a bare column with a literal, `IN`, `BETWEEN`, `IS
//! [NOT] NULL`, prefix `LIKE`, and `AND`/`OR`/`NOT` of those. A cast
//! around the column is never looked through (`CAST(x AS INT) = 5` keeps
//! `x = 5.5`; `x = 5` would not), and under `NOT` only exact conversions
//! are used (dropping half of an `AND` weakens it, and `NOT` would turn that
//! into a stronger predicate). The filter itself still runs on every row.

use std::collections::HashSet;

use datafusion::logical_expr::expr::{Between, InList, Like};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::scalar::ScalarValue;
use iceberg::expr::{Predicate, PredicateOperator, Reference};
use iceberg::spec::Datum;

/// One predicate implied by all of `filters` (a conjunction), if any part
/// of them can be expressed. Columns in `unusable` are left out (their
/// statistics cannot be trusted: see
/// [`crate::schema::evolve::retyped_columns`]).
pub fn implied_by_all(filters: &[Expr], unusable: &HashSet<String>) -> Option<Predicate> {
    filters
        .iter()
        .filter_map(|f| implied(f, unusable))
        .reduce(Predicate::and)
}

/// A predicate every row satisfying `e` satisfies.
fn implied(e: &Expr, u: &HashSet<String>) -> Option<Predicate> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if *op == Operator::And => {
            match (implied(left, u), implied(right, u)) {
                (Some(l), Some(r)) => Some(l.and(r)),
                (one, None) | (None, one) => one,
            }
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if *op == Operator::Or => {
            Some(implied(left, u)?.or(implied(right, u)?))
        }
        _ => exact(e, u),
    }
}

/// A predicate equivalent to `e`.
fn exact(e: &Expr, u: &HashSet<String>) -> Option<Predicate> {
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
            Operator::And => Some(exact(left, u)?.and(exact(right, u)?)),
            Operator::Or => Some(exact(left, u)?.or(exact(right, u)?)),
            _ => comparison(left, *op, right, u),
        },
        Expr::Not(inner) => Some(!exact(inner, u)?),
        Expr::IsNull(inner) => Some(column(inner, u)?.is_null()),
        Expr::IsNotNull(inner) => Some(column(inner, u)?.is_not_null()),
        Expr::InList(InList {
            expr,
            list,
            negated,
        }) => {
            let col = column(expr, u)?;
            let values = list.iter().map(literal).collect::<Option<Vec<_>>>()?;
            Some(if *negated {
                col.is_not_in(values)
            } else {
                col.is_in(values)
            })
        }
        Expr::Between(Between {
            expr,
            negated,
            low,
            high,
        }) => {
            let col = column(expr, u)?;
            let within = col
                .clone()
                .greater_than_or_equal_to(literal(low)?)
                .and(col.less_than_or_equal_to(literal(high)?));
            Some(if *negated { !within } else { within })
        }
        Expr::Like(Like {
            negated,
            expr,
            pattern,
            escape_char: None,
            case_insensitive: false,
        }) => {
            let col = column(expr, u)?;
            let prefix = like_prefix(pattern)?;
            Some(if *negated {
                col.not_starts_with(Datum::string(prefix))
            } else {
                col.starts_with(Datum::string(prefix))
            })
        }
        _ => None,
    }
}

/// `left op right` where one side is a bare column and the other a literal.
fn comparison(left: &Expr, op: Operator, right: &Expr, u: &HashSet<String>) -> Option<Predicate> {
    let op = match op {
        Operator::Eq => PredicateOperator::Eq,
        Operator::NotEq => PredicateOperator::NotEq,
        Operator::Lt => PredicateOperator::LessThan,
        Operator::LtEq => PredicateOperator::LessThanOrEq,
        Operator::Gt => PredicateOperator::GreaterThan,
        Operator::GtEq => PredicateOperator::GreaterThanOrEq,
        _ => return None,
    };
    let (col, value, op) = match (column(left, u), literal(right)) {
        (Some(c), Some(v)) => (c, v, op),
        // `5 < x` is `x > 5`.
        _ => (column(right, u)?, literal(left)?, mirrored(op)),
    };
    Some(match op {
        PredicateOperator::Eq => col.equal_to(value),
        PredicateOperator::NotEq => col.not_equal_to(value),
        PredicateOperator::LessThan => col.less_than(value),
        PredicateOperator::LessThanOrEq => col.less_than_or_equal_to(value),
        PredicateOperator::GreaterThan => col.greater_than(value),
        _ => col.greater_than_or_equal_to(value),
    })
}

fn mirrored(op: PredicateOperator) -> PredicateOperator {
    match op {
        PredicateOperator::LessThan => PredicateOperator::GreaterThan,
        PredicateOperator::LessThanOrEq => PredicateOperator::GreaterThanOrEq,
        PredicateOperator::GreaterThan => PredicateOperator::LessThan,
        PredicateOperator::GreaterThanOrEq => PredicateOperator::LessThanOrEq,
        same => same,
    }
}

fn column(e: &Expr, unusable: &HashSet<String>) -> Option<Reference> {
    match e {
        Expr::Column(c) if !unusable.contains(c.name()) => Some(Reference::new(c.name())),
        _ => None,
    }
}

/// A non-null literal Iceberg can compare with (nulls compare to nothing:
/// `x = NULL` is never true, so it is left to the filter).
fn literal(e: &Expr) -> Option<Datum> {
    let Expr::Literal(value, _) = e else {
        return None;
    };
    Some(match value {
        ScalarValue::Boolean(Some(v)) => Datum::bool(*v),
        ScalarValue::Int8(Some(v)) => Datum::int(i32::from(*v)),
        ScalarValue::Int16(Some(v)) => Datum::int(i32::from(*v)),
        ScalarValue::Int32(Some(v)) => Datum::int(*v),
        ScalarValue::Int64(Some(v)) => Datum::long(*v),
        ScalarValue::UInt8(Some(v)) => Datum::int(i32::from(*v)),
        ScalarValue::UInt16(Some(v)) => Datum::int(i32::from(*v)),
        ScalarValue::UInt32(Some(v)) => Datum::long(i64::from(*v)),
        ScalarValue::Float32(Some(v)) => Datum::double(f64::from(*v)),
        ScalarValue::Float64(Some(v)) => Datum::double(*v),
        ScalarValue::Utf8(Some(v))
        | ScalarValue::LargeUtf8(Some(v))
        | ScalarValue::Utf8View(Some(v)) => Datum::string(v.clone()),
        ScalarValue::Date32(Some(v)) => Datum::date(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => Datum::timestamp_micros(*v),
        _ => return None,
    })
}

/// `abc` for the pattern `abc%` with no other wildcard.
fn like_prefix(pattern: &Expr) -> Option<String> {
    let Expr::Literal(
        ScalarValue::Utf8(Some(p))
        | ScalarValue::LargeUtf8(Some(p))
        | ScalarValue::Utf8View(Some(p)),
        _,
    ) = pattern
    else {
        return None;
    };
    let prefix = p.strip_suffix('%')?;
    (!prefix.contains(['%', '_', '\\'])).then(|| prefix.to_string())
}

#[cfg(test)]
mod tests {
    use datafusion::prelude::{cast, col, lit};

    use super::*;

    fn shown(e: Expr) -> Option<String> {
        implied_by_all(&[e], &HashSet::new()).map(|p| p.to_string())
    }

    #[test]
    fn comparisons_either_way_round() {
        assert_eq!(shown(col("x").gt(lit(5i64))), Some("x > 5".into()));
        assert_eq!(shown(lit(5i64).lt(col("x"))), Some("x > 5".into()));
        assert_eq!(shown(col("s").eq(lit("a"))), Some("s = \"a\"".into()));
    }

    #[test]
    fn unusable_columns_only_weaken() {
        let u = HashSet::from(["n".to_string()]);
        let both = col("n").gt(lit(5i64)).and(col("x").lt(lit(3i64)));
        let got = implied_by_all(&[both], &u).map(|p| p.to_string());
        assert_eq!(got, Some("x < 3".into()));
        let either = col("n").gt(lit(5i64)).or(col("x").lt(lit(3i64)));
        assert!(implied_by_all(std::slice::from_ref(&either), &u).is_none());
        assert!(implied_by_all(&[!either], &u).is_none());
    }

    #[test]
    fn casts_are_not_looked_through() {
        // CAST(5.5 AS INT) = 5, but 5.5 = 5 is false: pruning by `x = 5`
        // would drop a file holding only 5.5.
        let e = cast(col("x"), arrow::datatypes::DataType::Int32).eq(lit(5i32));
        assert_eq!(shown(e), None);
    }

    #[test]
    fn and_keeps_what_it_can_but_not_under_not() {
        let half = col("x")
            .gt(lit(1i64))
            .and(cast(col("y"), arrow::datatypes::DataType::Int32).eq(lit(2i32)));
        assert_eq!(shown(half.clone()), Some("x > 1".into()));
        // NOT (x > 1 AND f(y)) holds for x = 5 when f(y) is false; NOT (x > 1)
        // does not: nothing may be derived.
        assert_eq!(shown(Expr::Not(Box::new(half))), None);
        let or = col("x")
            .gt(lit(1i64))
            .or(cast(col("y"), arrow::datatypes::DataType::Int32).eq(lit(2i32)));
        assert_eq!(shown(or), None);
    }

    #[test]
    fn like_only_as_a_plain_prefix() {
        assert!(
            shown(col("s").like(lit("ab%")))
                .unwrap()
                .contains("STARTS WITH")
        );
        assert_eq!(shown(col("s").like(lit("a_c%"))), None);
        assert_eq!(shown(col("s").like(lit("%ab"))), None);
        assert_eq!(shown(col("s").ilike(lit("ab%"))), None);
    }

    #[test]
    fn null_literals_are_left_to_the_filter() {
        assert_eq!(shown(col("x").eq(lit(ScalarValue::Int64(None)))), None);
    }
}
