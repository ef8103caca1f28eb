//! Which table-metadata files a table no longer needs.
//!
//! Every commit writes a new `metadata.json`; the table keeps the previous
//! `write.metadata.previous-versions-max` of them in its metadata log.
//! With `write.metadata.delete-after-commit.enabled`, a file that falls out
//! of the log is deleted right after the commit (as Iceberg's Java writers
//! do), so metadata on storage stays flat however many commits are made.

use std::collections::HashSet;

use iceberg::table::Table;

/// Table property: how many previous `metadata.json` files the log keeps.
pub const PREVIOUS_VERSIONS_MAX: &str = "write.metadata.previous-versions-max";
/// Table property: delete `metadata.json` files that leave the log.
pub const DELETE_AFTER_COMMIT: &str = "write.metadata.delete-after-commit.enabled";

/// Whether `table` asks for retired metadata files to be deleted.
pub fn deletes_after_commit(table: &Table) -> bool {
    table
        .metadata()
        .properties()
        .get(DELETE_AFTER_COMMIT)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The metadata files `before` referenced (itself and its log) that
/// `after`, a later version of the same table, no longer does.
pub fn retired(before: &Table, after: &Table) -> Vec<String> {
    let keep: HashSet<&str> = after
        .metadata()
        .metadata_log()
        .iter()
        .map(|m| m.metadata_file.as_str())
        .chain(after.metadata_location())
        .collect();
    before
        .metadata()
        .metadata_log()
        .iter()
        .map(|m| m.metadata_file.as_str())
        .chain(before.metadata_location())
        .filter(|f| !keep.contains(f))
        .map(str::to_string)
        .collect()
}

/// After a commit from `before` to `after`: delete, in the background, the
/// metadata files that left the log, if the table asks for it. Only files
/// that were committed once are touched, never a commit in flight; a file
/// missed here (the process stopped first) is removed by snapshot expiry.
pub fn delete_retired(before: &Table, after: &Table) {
    if !deletes_after_commit(after) {
        return;
    }
    let retired = retired(before, after);
    if retired.is_empty() {
        return;
    }
    let io = after.file_io().clone();
    tokio::spawn(async move {
        for file in retired {
            if let Err(e) = io.delete(&file).await {
                tracing::debug!(file, error = %e, "retired metadata file not deleted; expiry will retry");
            }
        }
    });
}

/// The version number in a metadata file name (`00042-<uuid>.metadata.json`).
pub fn metadata_version(location: &str) -> Option<u64> {
    let name = location.rsplit('/').next()?;
    if !name.ends_with(".metadata.json") {
        return None;
    }
    name.split_once('-')?.0.parse().ok()
}

/// The oldest metadata version `table` still lists; older `metadata.json`
/// files (retired, or written by commits that lost their race) are
/// garbage. Versions only grow, so no commit in flight writes one.
pub fn oldest_listed_version(table: &Table) -> Option<u64> {
    table
        .metadata()
        .metadata_log()
        .iter()
        .map(|m| m.metadata_file.as_str())
        .chain(table.metadata_location())
        .filter_map(metadata_version)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_versions_parse_from_file_names() {
        let v = metadata_version("s3://b/w/t/metadata/00042-0191e2b5-7a4c.metadata.json");
        assert_eq!(v, Some(42));
        assert_eq!(
            metadata_version("/w/t/metadata/00003-a.gz.metadata.json"),
            Some(3)
        );
        assert_eq!(metadata_version("/w/t/metadata/snap-1-0-a.avro"), None);
        assert_eq!(metadata_version("/w/t/metadata/x-a.metadata.json"), None);
    }
}
