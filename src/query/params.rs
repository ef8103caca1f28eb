//! Positional parameters for prepared statements.
//!
//! Drivers send `?` (JDBC, ADBC) or `$1` placeholders and bind values as an
//! Arrow batch whose columns are the parameters in order (ADBC names them
//! "0", "1", …). DataFusion only understands `$n`, so `?` is rewritten on
//! the token stream (never inside strings or quoted identifiers).

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field};
use datafusion::common::{ParamValues, ScalarValue};
use datafusion::logical_expr::LogicalPlan;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::error::{Error, Result};

/// Rewrite each `?` placeholder into `$1`, `$2`, … in order.
pub fn number_placeholders(sql: &str) -> Result<String> {
    if !sql.contains('?') {
        return Ok(sql.to_string());
    }
    let tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize()
        .map_err(|e| Error::InvalidArgument(format!("SQL error: {e}")))?;
    let mut n = 0;
    let mut out = String::with_capacity(sql.len() + 8);
    for t in tokens {
        match t {
            Token::Placeholder(p) if p == "?" => {
                n += 1;
                out.push_str(&format!("${n}"));
            }
            other => out.push_str(&other.to_string()),
        }
    }
    Ok(out)
}

/// `plan`'s parameters in `$n` order, each with the type the plan fixes
/// for it (`Null` where it fixes none) as clients know it (no view types),
/// for prepared-statement schemas.
pub fn parameter_fields(plan: &LogicalPlan) -> Result<Vec<Field>> {
    Ok(parameter_types(plan)?
        .into_iter()
        .map(|(_, id, t)| {
            let t = t.map_or(DataType::Null, |t| super::views::client_type(&t));
            Field::new(id, t, true)
        })
        .collect())
}

/// `plan`'s placeholders as (`n` of `$n`, `"$n"`, fixed type), in order.
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<(usize, String, Option<DataType>)>> {
    let mut ids: Vec<_> = plan
        .get_parameter_types()?
        .into_iter()
        .map(|(id, t)| {
            let n: usize = id.trim_start_matches('$').parse().unwrap_or(usize::MAX);
            (n, id, t)
        })
        .collect();
    ids.sort();
    Ok(ids)
}

/// Row `row`'s parameters, each cast to the type `plan` expects of it when
/// the cast loses nothing: an `INSERT … VALUES (?)` into a BOOLEAN column
/// bound to `1` (what SQLAlchemy sends) gets the cast a literal `1` would.
/// A value the cast would change (2.5 for a BIGINT `?`, which DataFusion
/// types after the other operand) or cannot convert is bound as sent, and
/// type coercion compares it as it would a literal.
pub fn bind(plan: &LogicalPlan, batch: &RecordBatch, row: usize) -> Result<ParamValues> {
    let mut values = row_values(batch, row)?;
    for (n, _, want) in parameter_types(plan)? {
        let (Some(want), Some(value)) = (want, n.checked_sub(1).and_then(|i| values.get_mut(i)))
        else {
            continue;
        };
        if value.data_type() != want
            && let Ok(cast) = value.cast_to(&want)
            && cast
                .cast_to(&value.data_type())
                .is_ok_and(|back| back == *value)
        {
            *value = cast;
        }
    }
    Ok(ParamValues::from(values))
}

/// Bound parameters arrive as a batch, one row per execution. Some clients
/// wrap every value in a union (`flightsql-dbapi` sends
/// `dense_union<int64, float64, utf8, binary, bool>`) or a dictionary;
/// each value is bound as the plain value inside, as Arrow's own Flight SQL
/// servers do. Structs and maps have no SQL literal form and are refused.
/// Row `row`'s plain values, one per parameter.
fn row_values(batch: &RecordBatch, row: usize) -> Result<Vec<ScalarValue>> {
    let schema = batch.schema();
    schema
        .fields()
        .iter()
        .zip(batch.columns())
        .enumerate()
        .map(|(i, (field, column))| {
            let refuse = |why: &str| {
                Error::InvalidArgument(format!(
                    "parameter {} ('{}') of type {} cannot be bound: {why}",
                    i + 1,
                    field.name(),
                    field.data_type()
                ))
            };
            let value =
                ScalarValue::try_from_array(column, row).map_err(|e| refuse(&e.to_string()))?;
            plain_value(value).ok_or_else(|| {
                refuse("send a scalar (number, string, binary, boolean, date/time) or a list")
            })
        })
        .collect()
}

/// The value inside union and dictionary wrappers; `None` if it has no
/// scalar form a query can take.
fn plain_value(value: ScalarValue) -> Option<ScalarValue> {
    match value {
        ScalarValue::Union(Some((_, inner)), ..) | ScalarValue::Dictionary(_, inner) => {
            plain_value(*inner)
        }
        ScalarValue::Union(None, ..) => Some(ScalarValue::Null),
        ScalarValue::Struct(_) | ScalarValue::Map(_) => None,
        other => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_question_marks_outside_literals() {
        assert_eq!(
            number_placeholders("SELECT * FROM t WHERE a = ? AND b = '?' AND c > ?").unwrap(),
            "SELECT * FROM t WHERE a = $1 AND b = '?' AND c > $2"
        );
        assert_eq!(number_placeholders("SELECT $1").unwrap(), "SELECT $1");
    }

    #[test]
    fn union_and_dictionary_parameters_bind_their_values() {
        use std::sync::Arc;

        use arrow::array::{
            ArrayRef, DictionaryArray, Float64Array, Int64Array, StringArray, StructArray,
            UnionArray,
        };
        use arrow::buffer::ScalarBuffer;
        use arrow::datatypes::{DataType, Field, Int32Type, UnionFields};

        // One dense-union column, as flightsql-dbapi sends: row 0 is a
        // string, row 1 an integer, row 2 a float.
        let fields = UnionFields::try_new(
            [0, 1, 2],
            [
                Field::new("int64", DataType::Int64, true),
                Field::new("float64", DataType::Float64, true),
                Field::new("str", DataType::Utf8, true),
            ],
        )
        .unwrap();
        let union = UnionArray::try_new(
            fields,
            ScalarBuffer::from(vec![2_i8, 0, 1]),
            Some(ScalarBuffer::from(vec![0_i32, 0, 0])),
            vec![
                Arc::new(Int64Array::from(vec![7])) as ArrayRef,
                Arc::new(Float64Array::from(vec![0.5])),
                Arc::new(StringArray::from(vec!["recommender"])),
            ],
        )
        .unwrap();
        let dict: DictionaryArray<Int32Type> = vec!["a", "b", "a"].into_iter().collect();
        let batch = RecordBatch::try_from_iter([
            ("0", Arc::new(union) as ArrayRef),
            ("1", Arc::new(dict) as ArrayRef),
        ])
        .unwrap();
        let row = |r| row_values(&batch, r).unwrap();
        assert_eq!(
            row(0),
            vec![ScalarValue::from("recommender"), ScalarValue::from("a")]
        );
        assert_eq!(
            row(1),
            vec![ScalarValue::Int64(Some(7)), ScalarValue::from("b")]
        );
        assert_eq!(row(2)[0], ScalarValue::Float64(Some(0.5)));

        let structs = StructArray::from(vec![(
            Arc::new(Field::new("x", DataType::Int64, true)),
            Arc::new(Int64Array::from(vec![1])) as ArrayRef,
        )]);
        let batch = RecordBatch::try_from_iter([("when", Arc::new(structs) as ArrayRef)]).unwrap();
        let err = row_values(&batch, 0).unwrap_err().to_string();
        assert!(err.contains("parameter 1 ('when')"), "{err}");
    }
}
