//! `ALTER TABLE wildedge.raw_events …` and `COMMENT ON COLUMN …`: an
//! admin evolving the shared table's schema over Flight SQL (the rules are
//! in [`crate::schema::evolve`]). DataFusion does not plan these
//! statements, so they are read from the parsed SQL here.

use datafusion::sql::sqlparser::ast::{
    AlterColumnOperation, AlterTableOperation, ColumnOption, CommentObject, DataType,
    ExactNumberInfo, ObjectName, Statement, TimezoneInfo,
};
use iceberg::spec::PrimitiveType;

use crate::error::{Error, Result};
use crate::schema::evolve::Change;
use crate::tenant::names;

/// SQL types a new column may have, for error messages.
const TYPES: &str = "BOOLEAN, INT, BIGINT, REAL, DOUBLE, DECIMAL(p, s), VARCHAR, DATE, TIMESTAMP, TIMESTAMPTZ, BYTEA";

/// Whether `statement` changes a table's schema.
pub fn is_schema_change(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::AlterTable(_)
            | Statement::Comment {
                object_type: CommentObject::Column,
                ..
            }
    )
}

/// The table a schema-change statement names (its parts, as written) and
/// the changes it asks for.
pub fn schema_changes(statement: &Statement) -> Result<(Vec<String>, Vec<Change>)> {
    match statement {
        Statement::AlterTable(alter) => {
            if alter.operations.is_empty() {
                return Err(Error::InvalidArgument("ALTER TABLE names no change".into()));
            }
            let changes = alter
                .operations
                .iter()
                .map(change)
                .collect::<Result<Vec<_>>>()?;
            Ok((parts(&alter.name)?, changes))
        }
        Statement::Comment {
            object_type: CommentObject::Column,
            object_name,
            comment,
            ..
        } => {
            let mut parts = parts(object_name)?;
            let Some(column) = parts.pop().filter(|_| !parts.is_empty()) else {
                return Err(Error::InvalidArgument(
                    "COMMENT ON COLUMN needs table.column, e.g. wildedge.raw_events.session_id"
                        .into(),
                ));
            };
            Ok((
                parts,
                vec![Change::Document {
                    name: column.to_ascii_lowercase(),
                    doc: comment.clone().filter(|c| !c.is_empty()),
                }],
            ))
        }
        _ => Err(Error::Internal("not a schema change".into())),
    }
}

fn parts(name: &ObjectName) -> Result<Vec<String>> {
    name.0
        .iter()
        .map(|p| {
            p.as_ident()
                .map(|i| i.value.clone())
                .ok_or_else(|| Error::InvalidArgument(format!("'{p}' is not a table name")))
        })
        .collect()
}

fn change(op: &AlterTableOperation) -> Result<Change> {
    match op {
        AlterTableOperation::AddColumn {
            if_not_exists,
            column_def,
            ..
        } => {
            let name = names::normalize_identifier("column", &column_def.name.value)?;
            let mut doc = None;
            for option in &column_def.options {
                match &option.option {
                    ColumnOption::Comment(c) => doc = Some(c.clone()),
                    ColumnOption::Null => {}
                    ColumnOption::NotNull => {
                        return Err(Error::InvalidArgument(format!(
                            "column '{name}' cannot be NOT NULL: rows already written have no value for it; add it as a nullable column"
                        )));
                    }
                    other => {
                        return Err(Error::InvalidArgument(format!(
                            "column option '{other}' is not supported; a new column takes only COMMENT '…'"
                        )));
                    }
                }
            }
            Ok(Change::Add {
                name,
                field_type: primitive(&column_def.data_type)?,
                doc,
                if_not_exists: *if_not_exists,
            })
        }
        AlterTableOperation::AlterColumn { column_name, op } => match op {
            AlterColumnOperation::SetDataType {
                data_type,
                using: None,
                ..
            } => Ok(Change::Widen {
                name: column_name.value.to_ascii_lowercase(),
                to: primitive(data_type)?,
            }),
            AlterColumnOperation::SetDataType { using: Some(_), .. } => Err(Error::InvalidArgument(
                "ALTER COLUMN … TYPE … USING is not supported: files already written are never rewritten; only int → bigint, float → double and a larger decimal precision are allowed".into(),
            )),
            AlterColumnOperation::SetNotNull => Err(Error::InvalidArgument(format!(
                "column '{column_name}' cannot become NOT NULL: old rows and old clients may not have it"
            ))),
            other => Err(Error::InvalidArgument(format!(
                "ALTER COLUMN … {other} is not supported; allowed: ALTER COLUMN c TYPE <wider type>"
            ))),
        },
        AlterTableOperation::DropColumn { .. } => Err(Error::InvalidArgument(
            "columns of raw_events are never dropped: other engines and old snapshots read them, and their ids must not be reused; stop sending the column instead".into(),
        )),
        AlterTableOperation::RenameColumn { .. } => Err(Error::InvalidArgument(
            "columns of raw_events are not renamed: queries and engines reading the table by name would break; add a new column instead".into(),
        )),
        other => Err(Error::InvalidArgument(format!(
            "ALTER TABLE … {other} is not supported; allowed: ADD COLUMN, ALTER COLUMN … TYPE, and COMMENT ON COLUMN"
        ))),
    }
}

/// The Iceberg type of a SQL type name.
fn primitive(t: &DataType) -> Result<PrimitiveType> {
    use PrimitiveType as P;
    let decimal = |info: &ExactNumberInfo| match info {
        ExactNumberInfo::PrecisionAndScale(p, s)
            if (1..=38).contains(p) && *s >= 0 && *s as u64 <= *p =>
        {
            Ok(P::Decimal {
                precision: *p as u32,
                scale: *s as u32,
            })
        }
        ExactNumberInfo::Precision(p) if (1..=38).contains(p) => Ok(P::Decimal {
            precision: *p as u32,
            scale: 0,
        }),
        _ => Err(Error::InvalidArgument(format!(
            "{t}: give a precision of 1 to 38 and a scale not above it, e.g. DECIMAL(18, 4)"
        ))),
    };
    Ok(match t {
        DataType::Boolean | DataType::Bool => P::Boolean,
        DataType::Int(_) | DataType::Integer(_) | DataType::Int4(_) | DataType::Int32 => P::Int,
        DataType::BigInt(_) | DataType::Int8(_) | DataType::Int64 => P::Long,
        DataType::Real | DataType::Float4 | DataType::Float32 => P::Float,
        DataType::Float(ExactNumberInfo::Precision(p)) if *p <= 24 => P::Float,
        DataType::Float(ExactNumberInfo::None) => P::Float,
        DataType::Float(_)
        | DataType::Double(_)
        | DataType::DoublePrecision
        | DataType::Float8
        | DataType::Float64 => P::Double,
        DataType::Decimal(info) | DataType::Numeric(info) | DataType::Dec(info) => decimal(info)?,
        DataType::Varchar(_)
        | DataType::CharacterVarying(_)
        | DataType::CharVarying(_)
        | DataType::Text
        | DataType::String(_) => P::String,
        DataType::Date => P::Date,
        DataType::Timestamp(_, TimezoneInfo::None | TimezoneInfo::WithoutTimeZone)
        | DataType::TimestampNtz(_) => P::Timestamp,
        DataType::Timestamp(_, TimezoneInfo::WithTimeZone | TimezoneInfo::Tz) => P::Timestamptz,
        DataType::Bytea | DataType::Binary(_) | DataType::Varbinary(_) | DataType::Blob(_) => {
            P::Binary
        }
        other => {
            return Err(Error::InvalidArgument(format!(
                "column type {other} is not supported; use one of {TYPES}"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use datafusion::sql::parser::{DFParserBuilder, Statement as DFStatement};

    use super::*;

    fn parsed(sql: &str) -> Result<(Vec<String>, Vec<Change>)> {
        let mut statements = DFParserBuilder::new(sql)
            .build()
            .unwrap()
            .parse_statements()
            .unwrap();
        let DFStatement::Statement(s) = statements.pop_front().unwrap() else {
            panic!("not a SQL statement");
        };
        assert!(is_schema_change(&s));
        schema_changes(&s)
    }

    #[test]
    fn statements_become_changes() {
        let (table, changes) = parsed(
            "ALTER TABLE wildedge.raw_events ADD COLUMN gpu_temp DOUBLE COMMENT 'GPU °C', ADD COLUMN IF NOT EXISTS region VARCHAR",
        )
        .unwrap();
        assert_eq!(table, vec!["wildedge", "raw_events"]);
        assert_eq!(
            changes,
            vec![
                Change::Add {
                    name: "gpu_temp".into(),
                    field_type: PrimitiveType::Double,
                    doc: Some("GPU °C".into()),
                    if_not_exists: false
                },
                Change::Add {
                    name: "region".into(),
                    field_type: PrimitiveType::String,
                    doc: None,
                    if_not_exists: true
                },
            ]
        );
        let (_, changes) =
            parsed("ALTER TABLE raw_events ALTER COLUMN input_tokens TYPE BIGINT").unwrap();
        assert_eq!(
            changes,
            vec![Change::Widen {
                name: "input_tokens".into(),
                to: PrimitiveType::Long
            }]
        );
        let (table, changes) =
            parsed("COMMENT ON COLUMN wildedge.raw_events.session_id IS 'one app run'").unwrap();
        assert_eq!(table, vec!["wildedge", "raw_events"]);
        assert_eq!(
            changes,
            vec![Change::Document {
                name: "session_id".into(),
                doc: Some("one app run".into())
            }]
        );
    }

    #[test]
    fn unsafe_changes_are_refused_before_the_catalog() {
        for sql in [
            "ALTER TABLE raw_events ADD COLUMN x BIGINT NOT NULL",
            "ALTER TABLE raw_events ADD COLUMN x BIGINT DEFAULT 1",
            "ALTER TABLE raw_events ADD COLUMN x INTERVAL",
            "ALTER TABLE raw_events ADD COLUMN \"Bad Name\" INT",
            "ALTER TABLE raw_events DROP COLUMN model_name",
            "ALTER TABLE raw_events RENAME COLUMN model_name TO model",
            "ALTER TABLE raw_events ALTER COLUMN model_name SET NOT NULL",
            "ALTER TABLE raw_events ADD COLUMN d DECIMAL(50, 2)",
        ] {
            let e = parsed(sql).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{sql}: {e}");
        }
    }
}
