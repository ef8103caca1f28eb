//! Tenancy enforcement, in one place: what a tenant's reads are forced to
//! (the scope predicate and the per-file check) and what its writes carry
//! (the project stamp). Query and ingest call these; neither decides on
//! its own what a tenant may touch.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use iceberg::expr::{Predicate, Reference};
use iceberg::scan::FileScanTask;
use iceberg::spec::{Datum, PrimitiveLiteral, Transform};

use super::{Principal, names};
use crate::error::{Error, Result};
use crate::schema::col;
use crate::schema::partition::partition_value;

/// The Iceberg predicate every scan of `raw_events` by `project` carries,
/// whatever the query says: manifests and files of other tenants are
/// pruned before any data is read.
pub fn scope_predicate(project: &str) -> Predicate {
    Reference::new(col::PROJECT_ID).equal_to(Datum::string(project))
}

/// The `project_id` partition value of a planned file, if known.
fn task_project(task: &FileScanTask) -> Option<Option<&str>> {
    Some(
        match partition_value(task, col::PROJECT_ID, Transform::Identity)? {
            Some(PrimitiveLiteral::String(s)) => Some(s.as_str()),
            _ => None,
        },
    )
}

/// Refuse to read a planned file that is not in `project`'s partition: a
/// second, independent check behind [`scope_predicate`].
pub fn check_file_scope(task: &FileScanTask, project: &str) -> Result<()> {
    let in_scope = match task_project(task) {
        Some(value) => value == Some(project),
        // No partition info: fall back to the deterministic path prefix.
        None => task
            .data_file_path
            .contains(&format!("/project_id={project}/")),
    };
    if in_scope {
        Ok(())
    } else {
        tracing::error!(file = %task.data_file_path, project, "planned a file outside the tenant's partition");
        Err(Error::Internal(
            "scan planned a file outside the caller's project; refusing to read it".into(),
        ))
    }
}

/// Whose project the rows of a `raw_events` write may carry.
#[derive(Debug, Clone, Copy)]
pub enum ProjectRule<'a> {
    /// Tenant write: rows are stamped with this project; a batch carrying
    /// any other value is refused as a whole.
    Stamp(&'a str),
    /// Admin write: every row must carry a valid `project_id`.
    FromBatch,
}

impl Principal {
    /// The rule for `project_id` on this caller's `raw_events` writes.
    pub fn project_rule(&self) -> Result<ProjectRule<'_>> {
        match (&self.project_id, self.is_admin()) {
            (_, true) => Ok(ProjectRule::FromBatch),
            (Some(p), false) => Ok(ProjectRule::Stamp(p)),
            (None, false) => Err(Error::PermissionDenied("token has no project".into())),
        }
    }
}

/// The `project_id` column of `rows` rows written under `rule`; `given` is
/// the batch's own `project_id` column as `Utf8`, if it sent one.
pub fn stamp_project(
    rule: ProjectRule<'_>,
    given: Option<ArrayRef>,
    rows: usize,
) -> Result<ArrayRef> {
    let strings = |a: &ArrayRef| -> Result<StringArray> {
        a.as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .ok_or_else(|| Error::Internal("project_id is not utf8 after coercion".into()))
    };
    match rule {
        ProjectRule::Stamp(project) => {
            if let Some(given) = &given
                && let Some(other) = strings(given)?.iter().flatten().find(|v| *v != project)
            {
                return Err(Error::PermissionDenied(format!(
                    "batch carries project_id '{other}' but the token belongs to project '{project}'; \
                     omit project_id (it is taken from the token) or use that project's token"
                )));
            }
            Ok(Arc::new(StringArray::from(vec![project; rows])))
        }
        ProjectRule::FromBatch => {
            let given = given.ok_or_else(|| {
                Error::InvalidArgument("admin ingest needs a 'project_id' column".into())
            })?;
            let mut seen = std::collections::HashSet::new();
            for v in strings(&given)?.iter() {
                let v = v.ok_or_else(|| {
                    Error::InvalidArgument("column 'project_id' has null values".into())
                })?;
                if seen.insert(v) {
                    names::validate_project_id(v)?;
                }
            }
            Ok(given)
        }
    }
}
