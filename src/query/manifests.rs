//! Manifest-level pruning, made visible.
//!
//! iceberg prunes manifests by their partition summaries while planning, but
//! 0.10.1 keeps that evaluator private and reports nothing. To show how many
//! manifests a query had to consider, the scan evaluates the same summaries
//! here against its predicate: `project_id` (identity) and `event_timestamp`
//! ranges through `day(...)`, the partition fields Raindrop's tables use.
//! Anything it cannot decide counts as overlapping, so the figure is an
//! upper bound on the manifests iceberg opened.
//!
//! Manifest lists are immutable and named per snapshot, so they are cached
//! by location: repeated queries read no manifest list.

use std::sync::Arc;

use iceberg::expr::{Predicate, PredicateOperator};
use iceberg::spec::{
    Datum, FieldSummary, ManifestContentType, ManifestList, PartitionSpec, PrimitiveLiteral,
    PrimitiveType, Transform, Type,
};
use iceberg::table::Table;

const DAY_MICROS: i64 = 86_400_000_000;

/// Parsed manifest lists by location, at most `capacity` of them.
#[derive(Debug)]
pub struct ManifestLists(moka::sync::Cache<String, Arc<ManifestList>>);

impl ManifestLists {
    /// A cache of at most `capacity` manifest lists.
    pub fn new(capacity: usize) -> Self {
        Self(
            moka::sync::Cache::builder()
                .max_capacity(capacity.max(1) as u64)
                .eviction_policy(moka::policy::EvictionPolicy::lru())
                .build(),
        )
    }

    /// The current snapshot's manifest list (`None` for an empty table).
    pub async fn current(&self, table: &Table) -> iceberg::Result<Option<Arc<ManifestList>>> {
        let Some(snapshot) = table.metadata().current_snapshot() else {
            return Ok(None);
        };
        let location = snapshot.manifest_list();
        if let Some(list) = self.0.get(location) {
            return Ok(Some(list));
        }
        let bytes = table.file_io().new_input(location)?.read().await?;
        let list = Arc::new(ManifestList::parse_with_version(
            &bytes,
            table.metadata().format_version(),
        )?);
        self.0.insert(location.to_string(), list.clone());
        Ok(Some(list))
    }
}

/// Data manifests of `list` whose partition ranges may hold rows matching
/// `predicate`, and the number of data manifests.
pub fn overlapping(
    list: &ManifestList,
    table: &Table,
    predicate: Option<&Predicate>,
) -> (usize, usize) {
    let data = list
        .entries()
        .iter()
        .filter(|m| m.content == ManifestContentType::Data);
    let (mut matched, mut total) = (0, 0);
    for manifest in data {
        total += 1;
        let spec = table
            .metadata()
            .partition_spec_by_id(manifest.partition_spec_id);
        let may_match = match (predicate, spec, &manifest.partitions) {
            (Some(p), Some(spec), Some(summaries)) => may_match(p, table, spec, summaries),
            _ => true,
        };
        matched += usize::from(may_match);
    }
    (matched, total)
}

fn may_match(p: &Predicate, table: &Table, spec: &PartitionSpec, sums: &[FieldSummary]) -> bool {
    match p {
        Predicate::AlwaysFalse => false,
        Predicate::And(e) => e.inputs().iter().all(|q| may_match(q, table, spec, sums)),
        Predicate::Or(e) => e.inputs().iter().any(|q| may_match(q, table, spec, sums)),
        Predicate::Binary(e) => {
            summaries_for(e.term().name(), table, spec, sums).all(|(transform, result, s)| {
                field_may_match(e.op(), e.literal(), transform, &result, s)
            })
        }
        Predicate::Set(e) if e.op() == PredicateOperator::In => {
            summaries_for(e.term().name(), table, spec, sums).all(|(transform, result, s)| {
                e.literals()
                    .iter()
                    .any(|v| field_may_match(PredicateOperator::Eq, v, transform, &result, s))
            })
        }
        // NOT, IS NULL, NOT IN, …: not decided here.
        _ => true,
    }
}

/// (transform, partition value type, summary) of each partition field
/// derived from column `name`.
fn summaries_for<'a>(
    name: &str,
    table: &Table,
    spec: &'a PartitionSpec,
    sums: &'a [FieldSummary],
) -> impl Iterator<Item = (Transform, PrimitiveType, &'a FieldSummary)> + 'a {
    let source = table
        .metadata()
        .current_schema()
        .field_by_name(name)
        .cloned();
    spec.fields()
        .iter()
        .zip(sums)
        .filter_map(move |(field, summary)| {
            let source = source.as_ref().filter(|s| s.id == field.source_id)?;
            match field.transform.result_type(&source.field_type).ok()? {
                Type::Primitive(result) => Some((field.transform, result, summary)),
                _ => None,
            }
        })
}

/// Whether a summary's `[lower, upper]` admits `column <op> value`.
fn field_may_match(
    op: PredicateOperator,
    value: &Datum,
    transform: Transform,
    result: &PrimitiveType,
    summary: &FieldSummary,
) -> bool {
    let bound = |b: Option<&[u8]>| b.and_then(|b| Datum::try_from_bytes(b, result.clone()).ok());
    let (Some(lower), Some(upper)) = (
        bound(summary.lower_bound.as_deref().map(|b| &b[..])),
        bound(summary.upper_bound.as_deref().map(|b| &b[..])),
    ) else {
        return true;
    };
    use PredicateOperator::*;
    match transform {
        Transform::Identity => match op {
            Eq => lower <= *value && *value <= upper,
            LessThan => lower < *value,
            LessThanOrEq => lower <= *value,
            GreaterThan => upper > *value,
            GreaterThanOrEq => upper >= *value,
            _ => true,
        },
        Transform::Day => {
            let (Some(lo), Some(hi), Some(t)) = (day(&lower), day(&upper), micros(value)) else {
                return true;
            };
            let d = t.div_euclid(DAY_MICROS);
            match op {
                Eq => lo <= d && d <= hi,
                LessThan => lo <= (t - 1).div_euclid(DAY_MICROS),
                LessThanOrEq => lo <= d,
                GreaterThan | GreaterThanOrEq => hi >= d,
                _ => true,
            }
        }
        _ => true,
    }
}

fn day(d: &Datum) -> Option<i64> {
    match d.literal() {
        PrimitiveLiteral::Int(v) => Some(i64::from(*v)),
        _ => None,
    }
}

/// A timestamp literal in microseconds.
fn micros(d: &Datum) -> Option<i64> {
    match (d.data_type(), d.literal()) {
        (PrimitiveType::Timestamp | PrimitiveType::Timestamptz, PrimitiveLiteral::Long(v)) => {
            Some(*v)
        }
        (PrimitiveType::TimestampNs | PrimitiveType::TimestamptzNs, PrimitiveLiteral::Long(v)) => {
            Some(v.div_euclid(1000))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(lower: Datum, upper: Datum) -> FieldSummary {
        FieldSummary {
            contains_null: false,
            contains_nan: None,
            lower_bound: Some(lower.to_bytes().unwrap()),
            upper_bound: Some(upper.to_bytes().unwrap()),
        }
    }

    #[test]
    fn day_summaries_admit_exactly_the_overlapping_ranges() {
        // A manifest holding days 10..=12.
        let s = summary(Datum::date(10), Datum::date(12));
        let at = |day: i64, extra: i64| Datum::timestamptz_micros(day * DAY_MICROS + extra);
        let check = |op, value: Datum| {
            field_may_match(op, &value, Transform::Day, &PrimitiveType::Date, &s)
        };
        use PredicateOperator::*;
        assert!(check(GreaterThanOrEq, at(12, 5)));
        assert!(!check(GreaterThanOrEq, at(13, 0)));
        assert!(
            !check(LessThan, at(10, 0)),
            "ts < midnight of day 10 is day 9 or earlier"
        );
        assert!(check(LessThan, at(10, 1)));
        assert!(check(Eq, at(11, 7)));
        assert!(!check(Eq, at(9, 86_399_999_999)));
        assert!(!check(LessThanOrEq, at(9, 0)));
    }

    #[test]
    fn identity_summaries_compare_values() {
        let s = summary(Datum::string("acme"), Datum::string("acme"));
        let check = |op, v: &str| {
            field_may_match(
                op,
                &Datum::string(v),
                Transform::Identity,
                &PrimitiveType::String,
                &s,
            )
        };
        assert!(check(PredicateOperator::Eq, "acme"));
        assert!(!check(PredicateOperator::Eq, "globex"));
        assert!(!check(PredicateOperator::GreaterThan, "acme"));
        assert!(check(PredicateOperator::GreaterThanOrEq, "acme"));
    }
}
