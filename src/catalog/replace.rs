//! Replacing a tenant table (`CREATE OR REPLACE TABLE … AS SELECT`, ingest
//! mode `replace`) in one commit: a reader sees the old table or the new
//! one, never a missing or empty table, and the table keeps its identity
//! (uuid, history), so the old snapshots expire, and their files leave
//! storage, like any other. iceberg 0.10.1 has no replace transaction; as
//! in [`super::rewrite`], the commit is built from public parts.
//!
//! The new schema gets fresh field ids above the table's last column id,
//! so no id of the old schema is reused for a different column (Java
//! reuses ids of same-named columns; fresh ones are simpler and as valid).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema as ArrowSchema};
use iceberg::spec::{
    DataFile, MAIN_BRANCH, ManifestListWriter, ManifestWriterBuilder, Operation, Schema, Snapshot,
    SnapshotReference, SnapshotRetention, Summary,
};
use iceberg::table::Table;
use iceberg::{TableIdent, TableUpdate};
use parquet::arrow::PARQUET_FIELD_ID_META_KEY;

use super::cache::TableCache;
use super::rewrite::{swap_in, unique_snapshot_id};
use crate::error::{Error, Result};

/// `base` with `schema` (renumbered above its last column id) as its
/// current schema and no current snapshot: the table the replacement's
/// files are written for. Nothing is committed.
pub fn staged_replacement(base: &Table, schema: &Schema) -> Result<Table> {
    let fresh = renumbered(schema, base.metadata().last_column_id())?;
    let metadata = base
        .metadata()
        .clone()
        .into_builder(Some(base.metadata_location_result()?.to_string()))
        .add_current_schema(fresh)?
        .remove_ref(MAIN_BRANCH)
        .build()?
        .metadata;
    Ok(Table::builder()
        .identifier(base.identifier().clone())
        .metadata(metadata)
        .metadata_location(base.metadata_location_result()?.to_string())
        .file_io(base.file_io().clone())
        .runtime(iceberg::Runtime::try_current()?)
        .build()?)
}

/// Commit `staged` (from [`staged_replacement`] on `base`) with `files`
/// as the table's only rows, if the table is still at `base`: `false`
/// when another commit moved it first (nothing committed).
pub async fn commit_replacement(
    tables: &TableCache,
    ident: &TableIdent,
    base: &Table,
    staged: &Table,
    files: &[DataFile],
) -> Result<bool> {
    let metadata = staged.metadata();
    let mut builder = base
        .metadata()
        .clone()
        .into_builder(Some(base.metadata_location_result()?.to_string()))
        .add_current_schema(metadata.current_schema().as_ref().clone())?
        .remove_ref(MAIN_BRANCH);
    // An empty replacement leaves the table without a current snapshot:
    // empty, with the new schema.
    if !files.is_empty() {
        let io = staged.file_io();
        let snapshot_id = unique_snapshot_id(base);
        let sequence_number = base.metadata().next_sequence_number();
        let commit_uuid = uuid::Uuid::now_v7();
        let mut writer = ManifestWriterBuilder::new(
            io.new_output(format!(
                "{}/metadata/{commit_uuid}-m0.avro",
                metadata.location()
            ))?,
            Some(snapshot_id),
            metadata.current_schema().clone(),
            metadata.default_partition_spec().as_ref().clone(),
        )
        .build_v2_data();
        for f in files {
            writer.add_file(f.clone(), sequence_number)?;
        }
        let manifest = writer.write_manifest_file().await?;
        let list_path = format!(
            "{}/metadata/snap-{snapshot_id}-0-{commit_uuid}.avro",
            metadata.location()
        );
        // No parent: the old snapshots are history, not this one's lineage.
        let mut list = ManifestListWriter::v2(
            io.new_output(&list_path)?.writer().await?,
            snapshot_id,
            None,
            sequence_number,
        );
        list.add_manifests(std::iter::once(manifest))?;
        list.close().await?;
        let snapshot = Snapshot::builder()
            .with_manifest_list(list_path)
            .with_snapshot_id(snapshot_id)
            .with_parent_snapshot_id(None)
            .with_sequence_number(sequence_number)
            .with_summary(summary(files))
            .with_schema_id(metadata.current_schema_id())
            .with_timestamp_ms(chrono::Utc::now().timestamp_millis())
            .build();
        builder = TableUpdate::AddSnapshot { snapshot }.apply(builder)?;
        builder = TableUpdate::SetSnapshotRef {
            ref_name: MAIN_BRANCH.to_string(),
            reference: SnapshotReference::new(
                snapshot_id,
                SnapshotRetention::branch(None, None, None),
            ),
        }
        .apply(builder)?;
    }
    swap_in(tables, ident, base, builder).await
}

/// Totals of a table holding exactly `files`.
fn summary(files: &[DataFile]) -> Summary {
    let rows: u64 = files.iter().map(|f| f.record_count()).sum();
    let bytes: u64 = files.iter().map(|f| f.file_size_in_bytes()).sum();
    let n = files.len().to_string();
    Summary {
        operation: Operation::Overwrite,
        additional_properties: [
            ("added-data-files", n.clone()),
            ("added-records", rows.to_string()),
            ("added-files-size", bytes.to_string()),
            ("total-data-files", n),
            ("total-records", rows.to_string()),
            ("total-files-size", bytes.to_string()),
            ("total-delete-files", "0".to_string()),
            ("total-position-deletes", "0".to_string()),
            ("total-equality-deletes", "0".to_string()),
            ("raindrop.replaced-table", "true".to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect(),
    }
}

/// `schema` with every field id (nested ones too) moved above `last_id`.
fn renumbered(schema: &Schema, last_id: i32) -> Result<Schema> {
    let arrow = iceberg::arrow::schema_to_arrow_schema(schema)?;
    let fields = arrow
        .fields()
        .iter()
        .map(|f| offset_field(f, last_id))
        .collect::<Result<Fields>>()?;
    Ok(iceberg::arrow::arrow_schema_to_schema(&ArrowSchema::new(
        fields,
    ))?)
}

fn offset_field(field: &Field, by: i32) -> Result<Field> {
    let mut metadata = field.metadata().clone();
    if let Some(id) = metadata.get_mut(PARQUET_FIELD_ID_META_KEY) {
        let n: i32 = id
            .parse()
            .map_err(|e| Error::Internal(format!("field id {id:?}: {e}")))?;
        *id = (n + by).to_string();
    }
    let child = |f: &Arc<Field>| offset_field(f, by).map(Arc::new);
    let data_type = match field.data_type() {
        DataType::Struct(fields) => DataType::Struct(
            fields
                .iter()
                .map(|f| offset_field(f, by))
                .collect::<Result<Fields>>()?,
        ),
        DataType::List(f) => DataType::List(child(f)?),
        DataType::LargeList(f) => DataType::LargeList(child(f)?),
        DataType::FixedSizeList(f, n) => DataType::FixedSizeList(child(f)?, *n),
        DataType::Map(f, sorted) => DataType::Map(child(f)?, *sorted),
        other => other.clone(),
    };
    Ok(field
        .clone()
        .with_data_type(data_type)
        .with_metadata(metadata))
}

#[cfg(test)]
mod tests {
    use iceberg::spec::{ListType, NestedField, PrimitiveType, Type};

    use super::*;

    #[test]
    fn renumbering_moves_every_id_above_the_last_one() {
        let schema = Schema::builder()
            .with_fields(vec![
                NestedField::required(1, "a", Type::Primitive(PrimitiveType::String)).into(),
                NestedField::optional(
                    2,
                    "b",
                    Type::List(ListType::new(
                        NestedField::list_element(3, Type::Primitive(PrimitiveType::Long), false)
                            .into(),
                    )),
                )
                .into(),
            ])
            .build()
            .unwrap();
        let fresh = renumbered(&schema, 10).unwrap();
        assert_eq!(fresh.field_by_name("a").unwrap().id, 11);
        assert_eq!(fresh.field_by_name("b").unwrap().id, 12);
        assert_eq!(fresh.highest_field_id(), 13);
        assert!(fresh.field_by_name("a").unwrap().required);
    }
}
