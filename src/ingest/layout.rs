//! The order of rows inside each data file ([`LAYOUT`]) and the fast sort
//! that produces it: dense integer ranks packed into one `u128` per row.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use arrow::row::{RowConverter, SortField};
use futures::StreamExt;
use futures::stream::BoxStream;

use crate::error::Result;
use crate::schema;

/// A key rows are sorted by inside each file.
#[derive(Debug, Clone, Copy)]
pub enum LayoutKey {
    /// A column's values.
    Column(&'static str),
    /// A microsecond timestamp column truncated to the hour.
    Hour(&'static str),
}

/// How rows are ordered inside each file, when the table has the columns
/// (measured on the demo data, `docs/ingest.md`):
/// - `model_name` first: one model's rows sit together (dictionary/RLE);
/// - then the hour: page min/max statistics still prune time ranges inside
///   a day's file at about hour granularity;
/// - then `session_id`: a session's events (same device, platform, model
///   version, neighbouring ids) sit together, ~10% smaller files than
///   plain time order;
/// - then `event_timestamp`.
pub const LAYOUT: &[LayoutKey] = &[
    LayoutKey::Column("model_name"),
    LayoutKey::Hour(schema::col::EVENT_TIMESTAMP),
    LayoutKey::Column("session_id"),
    LayoutKey::Column(schema::col::EVENT_TIMESTAMP),
];

fn layout_keys(batch: &RecordBatch) -> Vec<ArrayRef> {
    LAYOUT
        .iter()
        .filter_map(|key| match key {
            LayoutKey::Column(c) => batch.column_by_name(c).cloned(),
            LayoutKey::Hour(c) => batch.column_by_name(c).and_then(hours),
        })
        .collect()
}

/// Hours since the epoch of a microsecond timestamp column.
fn hours(column: &ArrayRef) -> Option<ArrayRef> {
    use arrow::datatypes::{Int64Type, TimeUnit, TimestampMicrosecondType};
    const HOUR_US: i64 = 3_600_000_000;
    match column.data_type() {
        arrow::datatypes::DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let ts = column.as_primitive::<TimestampMicrosecondType>();
            let hours: arrow::array::PrimitiveArray<Int64Type> =
                arrow::compute::kernels::arity::unary(ts, |t| t.div_euclid(HOUR_US));
            Some(Arc::new(hours))
        }
        _ => None,
    }
}

/// The order of rows sorted by `keys` (ascending, nulls first); `None`
/// without keys. Usually one integer sort of packed ranks
/// ([`packed_order`]); otherwise rows are compared in arrow's row format
/// (one memcmp per pair, whatever the number and types of keys).
fn sort_rows(keys: &[ArrayRef]) -> Result<Option<UInt32Array>> {
    if keys.is_empty() {
        return Ok(None);
    }
    match packed_order(keys) {
        Some(order) => Ok(Some(order)),
        None => row_format_order(keys).map(Some),
    }
}

fn row_format_order(keys: &[ArrayRef]) -> Result<UInt32Array> {
    let converter = RowConverter::new(
        keys.iter()
            .map(|k| SortField::new(k.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(keys)?;
    let mut order: Vec<u32> = (0..rows.num_rows() as u32).collect();
    order.sort_unstable_by(|&a, &b| rows.row(a as usize).cmp(&rows.row(b as usize)));
    Ok(UInt32Array::from(order))
}

/// Each row's rank under one sort key, and the largest rank: nulls 0, then
/// values in ascending order (strings by bytes, like the row format).
/// `None` for types without a fast path.
fn key_ranks(key: &ArrayRef) -> Option<(Vec<u64>, u64)> {
    use arrow::datatypes::{DataType, Int32Type, Int64Type};
    fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> (Vec<u64>, u64) {
        // Ids by first appearance (runs of one value skip the hash), then
        // ids -> ranks once the distinct values are sorted.
        // foldhash: SipHash made hashing session ids ~5% of ingest CPU.
        let mut ids: HashMap<&str, u32, foldhash::fast::RandomState> = HashMap::default();
        let mut row_ids: Vec<u32> = vec![];
        let mut last: Option<(&str, u32)> = None;
        for v in values {
            let id = match v {
                None => u32::MAX,
                Some(v) => match last {
                    Some((l, id)) if l == v => id,
                    _ => {
                        let next = ids.len() as u32;
                        let id = *ids.entry(v).or_insert(next);
                        last = Some((v, id));
                        id
                    }
                },
            };
            row_ids.push(id);
        }
        let mut distinct: Vec<(&str, u32)> = ids.into_iter().collect();
        distinct.sort_unstable();
        let mut rank_of = vec![0u64; distinct.len()];
        for (rank, (_, id)) in distinct.iter().enumerate() {
            rank_of[*id as usize] = rank as u64 + 1;
        }
        let ranks = row_ids
            .into_iter()
            .map(|id| {
                if id == u32::MAX {
                    0
                } else {
                    rank_of[id as usize]
                }
            })
            .collect();
        (ranks, distinct.len() as u64)
    }
    fn ints(values: impl Iterator<Item = Option<i64>> + Clone) -> (Vec<u64>, u64) {
        let min = values.clone().flatten().min().unwrap_or(0);
        let ranks: Vec<u64> = values
            .map(|v| v.map_or(0, |v| (v.abs_diff(min)).saturating_add(1)))
            .collect();
        let max = ranks.iter().copied().max().unwrap_or(0);
        (ranks, max)
    }
    Some(match key.data_type() {
        DataType::Utf8 => strings(key.as_string::<i32>().iter()),
        DataType::LargeUtf8 => strings(key.as_string::<i64>().iter()),
        DataType::Utf8View => strings(key.as_string_view().iter()),
        DataType::Int32 | DataType::Date32 => {
            let a = arrow::compute::cast(key, &DataType::Int32).ok()?;
            ints(
                a.as_primitive::<Int32Type>()
                    .iter()
                    .map(|v| v.map(i64::from)),
            )
        }
        DataType::Int64 | DataType::Timestamp(_, _) => {
            let a = arrow::compute::cast(key, &DataType::Int64).ok()?;
            let a = a.as_primitive::<Int64Type>().clone();
            ints(a.iter())
        }
        _ => return None,
    })
}

/// Bits needed to hold `max`.
fn bits_for(max: u64) -> u32 {
    u64::BITS - max.leading_zeros()
}

/// The sort order as one integer sort: every key becomes a dense rank
/// ([`key_ranks`]), and the ranks plus the row index are packed into one
/// `u128` per row, most significant key first. Compared with the row format
/// this avoids a memcmp of variable-length rows per comparison (it was
/// ~13% of the ingest path's CPU). `None` when a key has another type or
/// the ranks do not fit in 128 bits.
fn packed_order(keys: &[ArrayRef]) -> Option<UInt32Array> {
    let n = keys[0].len();
    let index_bits = bits_for(n.saturating_sub(1) as u64);
    let mut columns = Vec::with_capacity(keys.len());
    let mut total = index_bits;
    for key in keys {
        let (ranks, max) = key_ranks(key)?;
        let bits = bits_for(max);
        total += bits;
        columns.push((ranks, bits));
    }
    if total > 128 || n > u32::MAX as usize {
        return None;
    }
    let mut packed: Vec<u128> = (0..n)
        .map(|i| {
            let mut v = 0u128;
            for (ranks, bits) in &columns {
                v = (v << bits) | u128::from(ranks[i]);
            }
            (v << index_bits) | i as u128
        })
        .collect();
    packed.sort_unstable();
    let mask = (1u128 << index_bits) - 1;
    Some(UInt32Array::from_iter_values(
        packed.into_iter().map(|v| (v & mask) as u32),
    ))
}

pub(super) fn sort_for_layout(batch: RecordBatch) -> Result<RecordBatch> {
    match sort_rows(&layout_keys(&batch))? {
        Some(order) => Ok(arrow::compute::take_record_batch(&batch, &order)?),
        None => Ok(batch),
    }
}

pub(super) fn sort_by_partition_then_layout(
    batch: RecordBatch,
    partition_values: ArrayRef,
) -> Result<(RecordBatch, ArrayRef)> {
    let mut keys = partition_values.as_struct().columns().to_vec();
    keys.extend(layout_keys(&batch));
    let order = sort_rows(&keys)?.expect("partition keys are present");
    Ok((
        arrow::compute::take_record_batch(&batch, &order)?,
        arrow::compute::take(&partition_values, &order, None)?,
    ))
}

/// Merge streams of rows, each already in layout order (a data file this
/// writer wrote), into one stream in layout order, holding a batch or two
/// per input: compaction merges files of any size in bounded memory,
/// where concatenating and sorting them held every row decoded at once.
/// An input not in layout order (written by another engine) still yields
/// every row, merged in its own order. `schema` is the inputs' schema.
pub fn merge_in_layout_order(
    schema: SchemaRef,
    inputs: Vec<BoxStream<'static, Result<RecordBatch>>>,
    batch_size: usize,
) -> Result<BoxStream<'static, Result<RecordBatch>>> {
    use datafusion::common::DataFusionError;
    use datafusion::execution::memory_pool::{MemoryConsumer, MemoryPool, UnboundedMemoryPool};
    use datafusion::physical_expr::{LexOrdering, PhysicalSortExpr, expressions::Column};
    use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet};
    use datafusion::physical_plan::sorts::streaming_merge::StreamingMergeBuilder;
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

    // The merge compares columns: each batch carries its layout keys (the
    // hour is computed) as extra columns after the table's, dropped after.
    let width = schema.fields().len();
    let probe = RecordBatch::new_empty(schema.clone());
    let key_fields: Vec<arrow::datatypes::Field> = layout_keys(&probe)
        .iter()
        .enumerate()
        .map(|(i, k)| {
            arrow::datatypes::Field::new(format!("layout_key_{i}"), k.data_type().clone(), true)
        })
        .collect();
    if key_fields.is_empty() || inputs.len() < 2 {
        return Ok(futures::stream::iter(inputs).flatten().boxed());
    }
    let mut fields: Vec<arrow::datatypes::FieldRef> = schema.fields().iter().cloned().collect();
    fields.extend(key_fields.into_iter().map(Arc::new));
    let keyed = Arc::new(arrow::datatypes::Schema::new(fields));
    let ordering = LexOrdering::new((0..keyed.fields().len() - width).map(|i| {
        let column = Column::new(keyed.field(width + i).name(), width + i);
        PhysicalSortExpr::new_default(Arc::new(column))
    }))
    .expect("layout keys are present");
    let streams = inputs
        .into_iter()
        .map(|input| {
            let keyed_schema = keyed.clone();
            let with_keys = input.map(move |batch| {
                let batch = batch.map_err(|e| DataFusionError::External(Box::new(e)))?;
                let mut columns = batch.columns().to_vec();
                columns.extend(layout_keys(&batch));
                Ok(RecordBatch::try_new(keyed_schema.clone(), columns)?)
            });
            Box::pin(RecordBatchStreamAdapter::new(keyed.clone(), with_keys))
                as datafusion::execution::SendableRecordBatchStream
        })
        .collect();
    let pool: Arc<dyn MemoryPool> = Arc::new(UnboundedMemoryPool::default());
    let merged = StreamingMergeBuilder::new()
        .with_streams(streams)
        .with_schema(keyed)
        .with_expressions(&ordering)
        .with_metrics(BaselineMetrics::new(&ExecutionPlanMetricsSet::new(), 0))
        .with_batch_size(batch_size)
        .with_reservation(MemoryConsumer::new("compaction merge").register(&pool))
        .build()?;
    let projection: Vec<usize> = (0..width).collect();
    Ok(merged
        .map(move |batch| Ok(batch?.project(&projection)?))
        .boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int32Array, LargeStringArray, StringArray, TimestampMicrosecondArray};

    /// The keys of `order`'s rows, in arrow's row format: equal sequences
    /// mean both orders sort the keys the same (ties may differ).
    fn sorted_keys(keys: &[ArrayRef], order: &UInt32Array) -> Vec<Vec<u8>> {
        let converter = RowConverter::new(
            keys.iter()
                .map(|k| SortField::new(k.data_type().clone()))
                .collect(),
        )
        .unwrap();
        let rows = converter.convert_columns(keys).unwrap();
        order
            .values()
            .iter()
            .map(|&i| rows.row(i as usize).as_ref().to_vec())
            .collect()
    }

    #[test]
    fn files_are_laid_out_by_model_hour_session_time() {
        use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        let hour = 3_600_000_000i64;
        // (model, session, timestamp): sessions cross hours and models.
        let rows = [
            ("b", "s1", 2 * hour + 5),
            ("a", "s2", hour + 7),
            ("a", "s1", hour + 9),
            ("a", "s3", 5),
            ("b", "s0", 2 * hour + 1),
            ("a", "s1", 3),
            ("a", "s2", 4),
        ];
        let schema = Arc::new(Schema::new(vec![
            Field::new("model_name", DataType::Utf8, true),
            Field::new("session_id", DataType::Utf8, true),
            Field::new(
                schema::col::EVENT_TIMESTAMP,
                DataType::Timestamp(TimeUnit::Microsecond, Some("+00:00".into())),
                false,
            ),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(rows.iter().map(|r| r.2))
                        .with_timezone("+00:00"),
                ),
            ],
        )
        .unwrap();
        let sorted = sort_for_layout(batch).unwrap();
        let model = sorted.column(0).as_string::<i32>();
        let session = sorted.column(1).as_string::<i32>();
        let ts = sorted
            .column(2)
            .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        let got: Vec<(&str, &str, i64)> = (0..sorted.num_rows())
            .map(|i| (model.value(i), session.value(i), ts.value(i)))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", "s1", 3),
                ("a", "s2", 4),
                ("a", "s3", 5),
                ("a", "s1", hour + 9),
                ("a", "s2", hour + 7),
                ("b", "s0", 2 * hour + 1),
                ("b", "s1", 2 * hour + 5),
            ]
        );
    }

    #[test]
    fn packed_order_sorts_like_the_row_format() {
        // Deterministic pseudo-random keys: strings with nulls and runs,
        // days, zoned timestamps spanning negative and positive values.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let n = 5000;
        let words = ["", "a", "ab", "b", "recommender", "fraud-detector", "Ä"];
        let project: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..n).map(|i| ["acme", "globex", "initech"][(i / 700) % 3]),
        ));
        let day: ArrayRef = Arc::new(Int32Array::from_iter_values(
            (0..n).map(|_| 20_000 + (next() % 30) as i32 - 15),
        ));
        let model: ArrayRef = Arc::new(StringArray::from_iter((0..n).map(|_| {
            let r = next();
            (r % 11 != 0).then(|| words[(r % words.len() as u64) as usize])
        })));
        let large: ArrayRef = Arc::new(LargeStringArray::from_iter_values(
            (0..n).map(|_| words[(next() % 3) as usize]),
        ));
        let ts: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from_iter((0..n).map(|_| {
                let r = next();
                (r % 13 != 0).then_some((r % 2_000_000_000_000) as i64 - 1_000_000_000_000)
            }))
            .with_timezone("+00:00"),
        );
        for keys in [
            vec![project.clone(), day.clone(), model.clone(), ts.clone()],
            vec![model.clone(), ts.clone()],
            vec![large.clone(), day.clone()],
            vec![ts.clone()],
        ] {
            let packed = packed_order(&keys).expect("these types have a fast path");
            let reference = row_format_order(&keys).unwrap();
            assert_eq!(sorted_keys(&keys, &packed), sorted_keys(&keys, &reference));
            let mut seen: Vec<u32> = packed.values().to_vec();
            seen.sort_unstable();
            assert_eq!(seen, (0..n as u32).collect::<Vec<_>>(), "a permutation");
        }
        // Types without a fast path fall back to the row format.
        let floats: ArrayRef = Arc::new(arrow::array::Float64Array::from(vec![1.0, 0.5]));
        assert!(packed_order(std::slice::from_ref(&floats)).is_none());
        assert_eq!(sort_rows(&[floats]).unwrap().unwrap().values(), &[1, 0]);
    }
}
