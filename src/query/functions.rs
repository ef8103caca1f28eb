//! Session functions Raindrop replaces.
//!
//! `event_timestamp` is `Timestamp(µs, "+00:00")` (Iceberg's `timestamptz`).
//! DataFusion's `date_trunc` truncates zoned timestamps row by row through
//! chrono's time-zone arithmetic (several times slower than its fast path
//! for zone-less values), yet for a zone whose offset is always zero the
//! result is the same as truncating the UTC value. [`UtcDateTrunc`] is
//! `date_trunc` with that shortcut: UTC-equivalent zones are dropped before
//! the call and put back on the result (both zero-copy); every other input
//! goes to DataFusion's function unchanged.

use std::any::Any;
use std::sync::Arc;

use arrow::array::{ArrayRef, make_array};
use arrow::datatypes::{DataType, FieldRef};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl,
    Signature,
};

/// Whether `tz` always has offset zero.
pub fn is_utc(tz: &str) -> bool {
    matches!(
        tz,
        "+00:00" | "+0000" | "+00" | "-00:00" | "Z" | "UTC" | "utc" | "Etc/UTC" | "GMT"
    )
}

/// The zone of a UTC-equivalent timestamp type.
fn utc_zone(data_type: &DataType) -> Option<Arc<str>> {
    match data_type {
        DataType::Timestamp(_, Some(tz)) if is_utc(tz) => Some(tz.clone()),
        _ => None,
    }
}

/// `data_type` with its time zone replaced by `tz`.
fn with_zone(data_type: &DataType, tz: Option<Arc<str>>) -> DataType {
    match data_type {
        DataType::Timestamp(unit, _) => DataType::Timestamp(*unit, tz),
        other => other.clone(),
    }
}

/// Relabel a timestamp value's zone without touching its data.
fn rezone(value: ColumnarValue, tz: Option<Arc<str>>) -> Result<ColumnarValue> {
    Ok(match value {
        ColumnarValue::Array(array) => {
            let data_type = with_zone(array.data_type(), tz);
            let data = array
                .to_data()
                .into_builder()
                .data_type(data_type)
                .build()?;
            ColumnarValue::Array(make_array(data) as ArrayRef)
        }
        ColumnarValue::Scalar(scalar) => ColumnarValue::Scalar(match scalar {
            ScalarValue::TimestampSecond(v, _) => ScalarValue::TimestampSecond(v, tz),
            ScalarValue::TimestampMillisecond(v, _) => ScalarValue::TimestampMillisecond(v, tz),
            ScalarValue::TimestampMicrosecond(v, _) => ScalarValue::TimestampMicrosecond(v, tz),
            ScalarValue::TimestampNanosecond(v, _) => ScalarValue::TimestampNanosecond(v, tz),
            other => other,
        }),
    })
}

fn rezone_field(field: &FieldRef, tz: Option<Arc<str>>) -> FieldRef {
    Arc::new(
        field
            .as_ref()
            .clone()
            .with_data_type(with_zone(field.data_type(), tz)),
    )
}

/// `date_trunc` that skips time-zone arithmetic for UTC (see module docs).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct UtcDateTrunc {
    inner: Arc<ScalarUDF>,
}

impl UtcDateTrunc {
    /// Wrap DataFusion's `date_trunc`.
    pub fn new() -> Self {
        Self {
            inner: datafusion::functions::datetime::date_trunc(),
        }
    }

    /// As a UDF to register on a session (replaces the built-in).
    pub fn udf() -> ScalarUDF {
        ScalarUDF::new_from_impl(Self::new())
    }
}

impl Default for UtcDateTrunc {
    fn default() -> Self {
        Self::new()
    }
}

impl ScalarUDFImpl for UtcDateTrunc {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn invoke_with_args(&self, mut args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let zone = args.arg_fields.get(1).and_then(|f| utc_zone(f.data_type()));
        let Some(zone) = zone else {
            return self.inner.invoke_with_args(args);
        };
        args.args[1] = rezone(args.args[1].clone(), None)?;
        args.arg_fields[1] = rezone_field(&args.arg_fields[1], None);
        args.return_field = rezone_field(&args.return_field, None);
        rezone(self.inner.invoke_with_args(args)?, Some(zone))
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, TimestampMicrosecondArray};
    use arrow::datatypes::Field;
    use datafusion::common::config::ConfigOptions;

    fn call(udf: &ScalarUDF, granularity: &str, input: ArrayRef) -> ArrayRef {
        let arg_fields: Vec<FieldRef> = vec![
            Arc::new(Field::new("g", DataType::Utf8, false)),
            Arc::new(Field::new("t", input.data_type().clone(), true)),
        ];
        let return_field = udf
            .return_field_from_args(ReturnFieldArgs {
                arg_fields: &arg_fields,
                scalar_arguments: &[None, None],
            })
            .unwrap();
        let out = udf
            .invoke_with_args(ScalarFunctionArgs {
                args: vec![
                    ColumnarValue::Scalar(ScalarValue::Utf8(Some(granularity.into()))),
                    ColumnarValue::Array(input.clone()),
                ],
                arg_fields,
                number_rows: input.len(),
                return_field,
                config_options: Arc::new(ConfigOptions::default()),
            })
            .unwrap();
        match out {
            ColumnarValue::Array(a) => a,
            ColumnarValue::Scalar(s) => s.to_array_of_size(input.len()).unwrap(),
        }
    }

    #[test]
    fn same_results_as_datafusion_for_utc_and_other_zones() {
        // Spread over ~60 years, including negative (pre-1970) instants.
        let values: Vec<Option<i64>> = (0..2000)
            .map(|i| (i % 97 != 0).then_some((i as i64 - 700) * 937_123_456_789))
            .collect();
        let builtin = datafusion::functions::datetime::date_trunc();
        let fast = UtcDateTrunc::udf();
        for tz in ["+00:00", "UTC", "Europe/Berlin", "-05:00"] {
            let input: ArrayRef =
                Arc::new(TimestampMicrosecondArray::from(values.clone()).with_timezone(tz));
            for g in [
                "year", "quarter", "month", "week", "day", "hour", "minute", "second",
            ] {
                let want = call(&builtin, g, input.clone());
                let got = call(&fast, g, input.clone());
                assert_eq!(got.data_type(), want.data_type(), "{tz} {g}");
                assert_eq!(got.to_data(), want.to_data(), "{tz} {g}");
            }
        }
    }
}
