//! Schema evolution of `raw_events`: the changes an admin may make, and the
//! rules that keep every file already written, and every engine reading
//! the table, valid.
//!
//! Only changes that Iceberg defines as safe for readers of old files are
//! allowed: a new *optional* column (old files read it as null), an Iceberg
//! type promotion (int → long, float → double, a decimal's precision up;
//! old files keep the narrower type and are read as the wider one), and a
//! column's doc. Nothing is dropped, renamed, narrowed or made required,
//! and a new column always gets an id above every id the table ever used,
//! so no id is reused for a different column.

use std::collections::HashSet;
use std::sync::Arc;

use iceberg::spec::{NestedField, PrimitiveType, Schema, TableMetadata, Type};

use super::{EVENT_DAY_PARTITION, col};
use crate::error::{Error, Result};

/// One change to the table's schema.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// A new optional column, after the existing ones.
    Add {
        /// Lowercase identifier (validated by the caller).
        name: String,
        /// Its type.
        field_type: PrimitiveType,
        /// Its doc, if any.
        doc: Option<String>,
        /// Whether an existing column of that name and type is fine.
        if_not_exists: bool,
    },
    /// A column's type promoted to a wider one.
    Widen {
        /// Existing column.
        name: String,
        /// The wider type.
        to: PrimitiveType,
    },
    /// A column's doc set (or cleared with `None`).
    Document {
        /// Existing column.
        name: String,
        /// The new doc.
        doc: Option<String>,
    },
}

/// `current` with `changes` applied, or `None` when they change nothing.
/// `last_column_id` is the table's highest id ever assigned: new columns
/// are numbered after it.
pub fn apply(current: &Schema, last_column_id: i32, changes: &[Change]) -> Result<Option<Schema>> {
    let mut fields: Vec<NestedField> = current
        .as_struct()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let mut next_id = last_column_id.max(current.highest_field_id()) + 1;
    for change in changes {
        match change {
            Change::Add {
                name,
                field_type,
                doc,
                if_not_exists,
            } => {
                if let Some(existing) = fields.iter().find(|f| f.name.eq_ignore_ascii_case(name)) {
                    let same = *existing.field_type == Type::Primitive(field_type.clone());
                    if *if_not_exists && same {
                        continue;
                    }
                    return Err(Error::AlreadyExists(format!(
                        "column '{name}' already exists ({}); choose another name{}",
                        existing.field_type,
                        if same {
                            " or write ADD COLUMN IF NOT EXISTS"
                        } else {
                            ""
                        }
                    )));
                }
                if name == EVENT_DAY_PARTITION || name == col::EVENT_DAY {
                    return Err(Error::InvalidArgument(format!(
                        "'{name}' is the table's virtual day column (the day of event_timestamp); choose another name"
                    )));
                }
                let mut field =
                    NestedField::optional(next_id, name, Type::Primitive(field_type.clone()));
                field.doc = doc.clone();
                next_id += 1;
                fields.push(field);
            }
            Change::Widen { name, to } => {
                let field = column(&mut fields, name)?;
                let Type::Primitive(from) = field.field_type.as_ref() else {
                    return Err(Error::InvalidArgument(format!(
                        "column '{name}' is a {}; only a primitive column's type can be widened",
                        field.field_type
                    )));
                };
                if from == to {
                    continue;
                }
                check_promotion(name, from, to)?;
                *field.field_type = Type::Primitive(to.clone());
            }
            Change::Document { name, doc } => {
                column(&mut fields, name)?.doc = doc.clone();
            }
        }
    }
    let changed = fields.len() != current.as_struct().fields().len()
        || fields
            .iter()
            .zip(current.as_struct().fields())
            .any(|(new, old)| new != old.as_ref());
    if !changed {
        return Ok(None);
    }
    Ok(Some(
        Schema::builder()
            .with_schema_id(current.schema_id())
            .with_identifier_field_ids(current.identifier_field_ids())
            .with_fields(fields.into_iter().map(Arc::new))
            .build()?,
    ))
}

fn column<'a>(fields: &'a mut [NestedField], name: &str) -> Result<&'a mut NestedField> {
    let names = fields
        .iter()
        .map(|f| f.name.clone())
        .collect::<Vec<_>>()
        .join(", ");
    fields
        .iter_mut()
        .find(|f| f.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| {
            Error::NotFound(format!(
                "column '{name}' does not exist; raw_events has {names}"
            ))
        })
}

/// Iceberg's allowed type promotions (spec, "Schema Evolution"): anything
/// else would make old files unreadable or lose values.
fn check_promotion(name: &str, from: &PrimitiveType, to: &PrimitiveType) -> Result<()> {
    use PrimitiveType as P;
    let allowed = match (from, to) {
        (P::Int, P::Long) | (P::Float, P::Double) => true,
        (
            P::Decimal {
                precision: p1,
                scale: s1,
            },
            P::Decimal {
                precision: p2,
                scale: s2,
            },
        ) => s1 == s2 && p2 >= p1,
        _ => false,
    };
    if allowed {
        return Ok(());
    }
    let narrowing = matches!(
        (from, to),
        (P::Long, P::Int) | (P::Double, P::Float) | (P::Decimal { .. }, P::Decimal { .. })
    );
    Err(Error::InvalidArgument(format!(
        "cannot change column '{name}' from {from} to {to}: {}; Iceberg allows only int → bigint, float → double and a decimal's precision up (same scale)",
        if narrowing {
            "that narrows it, and values already written may not fit"
        } else {
            "files already written keep the old type"
        }
    )))
}

/// Columns (by current name) whose type differs in some schema the table
/// had. Their statistics in manifests written before the change are in the
/// old type, which iceberg-rust 0.10.1 compares as unordered with a literal
/// of the new type: a range predicate on such a column would skip every
/// old file (`x > 5` loses rows), so it must not be used for pruning.
pub fn retyped_columns(metadata: &TableMetadata) -> HashSet<String> {
    let current = metadata.current_schema();
    let mut out = HashSet::new();
    for old in metadata.schemas_iter() {
        for f in old.as_struct().fields() {
            if let Some(now) = current.field_by_id(f.id)
                && now.field_type != f.field_type
            {
                out.insert(now.name.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::raw_events_schema;

    fn add(name: &str, t: PrimitiveType) -> Change {
        Change::Add {
            name: name.into(),
            field_type: t,
            doc: Some("why".into()),
            if_not_exists: false,
        }
    }

    #[test]
    fn new_columns_get_ids_above_every_id_ever_used() {
        let schema = raw_events_schema();
        // 19 is the map's value; a dropped column could have had 25.
        let out = apply(&schema, 25, &[add("gpu", PrimitiveType::Double)])
            .unwrap()
            .unwrap();
        let f = out.field_by_name("gpu").unwrap();
        assert_eq!(f.id, 26);
        assert!(!f.required);
        assert_eq!(f.doc.as_deref(), Some("why"));
        // Existing columns keep their ids and order.
        assert_eq!(out.field_by_name("input_tokens").unwrap().id, 14);
        assert_eq!(
            out.as_struct().fields().last().unwrap().name,
            "gpu".to_string()
        );
    }

    #[test]
    fn only_iceberg_promotions_widen() {
        let schema = raw_events_schema();
        let widen = |name: &str, to| Change::Widen {
            name: name.into(),
            to,
        };
        let out = apply(&schema, 19, &[widen("input_tokens", PrimitiveType::Long)])
            .unwrap()
            .unwrap();
        let f = out.field_by_name("input_tokens").unwrap();
        assert_eq!(
            (f.id, &*f.field_type),
            (14, &Type::Primitive(PrimitiveType::Long))
        );
        for (name, to) in [
            ("confidence", PrimitiveType::Float),
            ("confidence", PrimitiveType::Long),
            ("model_name", PrimitiveType::Long),
            ("input_tokens", PrimitiveType::Double),
        ] {
            let e = apply(&schema, 19, &[widen(name, to)]).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        }
        // Same type: no change, no new schema.
        assert!(
            apply(&schema, 19, &[widen("confidence", PrimitiveType::Double)])
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_additions_are_refused() {
        let schema = raw_events_schema();
        let e = apply(&schema, 19, &[add("model_name", PrimitiveType::String)]).unwrap_err();
        assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
        let e = apply(&schema, 19, &[add("event_day", PrimitiveType::Date)]).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
        let e = apply(
            &schema,
            19,
            &[Change::Document {
                name: "nope".into(),
                doc: None,
            }],
        )
        .unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e}");
        let exists = Change::Add {
            name: "model_name".into(),
            field_type: PrimitiveType::String,
            doc: None,
            if_not_exists: true,
        };
        assert!(apply(&schema, 19, &[exists]).unwrap().is_none());
    }
}
