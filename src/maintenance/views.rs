//! Cleaning the tenant views of `raw_events` (derived metadata the REST
//! catalog serves, [`crate::catalog::tenant_view`]) after expiry. They live
//! under `<table>/tenant-metadata/`, which expiry and the orphan sweep of
//! the base table never list, so nothing here can delete a base file and
//! nothing there deletes a view's.
//!
//! Per tenant, files older than the guard go when no served view needs
//! them:
//! - a `metadata.json` whose base version left the table's metadata log;
//! - a manifest list no kept `metadata.json` names;
//! - a manifest copy whose base manifest no retained snapshot lists.
//!
//! The guard is at least twice [`REUSE_WINDOW`]: a server reuses a list it
//! derived only within that window of its last use, and every use writes
//! a `metadata.json` naming it, which keeps it for the guard's length.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use iceberg::table::Table;
use serde_json::Value;

use super::orphans::{Reachable, delete_all, list, old_enough};
use crate::catalog::tenant_view::{REUSE_WINDOW, TENANT_METADATA_DIR};
use crate::error::Result;
use crate::storage::{ObjectInfo, Store, object_key};

/// Delete what no view of `table` needs any more (see the module docs);
/// `reachable` is what its retained snapshots reference. Returns how many
/// files were deleted.
pub async fn clean_tenant_views(
    store: &Store,
    table: &Table,
    reachable: &Reachable,
    min_file_age: Duration,
) -> Result<usize> {
    let guard = min_file_age.max(REUSE_WINDOW * 2);
    let metadata = table.metadata();
    let mut tenants: BTreeMap<String, Vec<ObjectInfo>> = BTreeMap::new();
    for object in list(store, table, TENANT_METADATA_DIR).await? {
        let dir = object.location.rsplit_once('/').map_or("", |(d, _)| d);
        tenants.entry(dir.to_string()).or_default().push(object);
    }
    let base_versions: HashSet<&str> = metadata
        .metadata_log()
        .iter()
        .map(|l| l.metadata_file.as_str())
        .chain(table.metadata_location())
        .map(file_name)
        .collect();
    let base_manifests: HashSet<&str> = reachable.manifests.iter().map(|k| file_name(k)).collect();

    let mut doomed = vec![];
    for objects in tenants.into_values() {
        let young = |o: &ObjectInfo| !old_enough(o, guard);
        let mut lists_kept: HashSet<String> = HashSet::new();
        for o in objects
            .iter()
            .filter(|o| o.location.ends_with(".metadata.json"))
        {
            if young(o) || base_versions.contains(file_name(&o.location)) {
                lists_kept.extend(named_lists(table, &o.location).await?);
            } else {
                doomed.push(o.location.clone());
            }
        }
        for o in objects.iter().filter(|o| o.location.ends_with(".avro")) {
            let name = file_name(&o.location);
            let keep = young(o)
                || if name.starts_with("snap-") {
                    lists_kept.contains(object_key(&o.location).as_ref())
                } else {
                    base_manifests.contains(name)
                };
            if !keep {
                doomed.push(o.location.clone());
            }
        }
    }
    delete_all(store, doomed).await
}

fn file_name(location: &str) -> &str {
    location.rsplit('/').next().unwrap_or(location)
}

/// The manifest lists a derived `metadata.json` names, by object key. One
/// that cannot be read or parsed names none: it was cut short and is
/// deleted once old.
async fn named_lists(table: &Table, location: &str) -> Result<Vec<String>> {
    let Ok(bytes) = table.file_io().new_input(location)?.read().await else {
        return Ok(vec![]);
    };
    let Ok(json) = serde_json::from_slice::<Value>(&bytes) else {
        return Ok(vec![]);
    };
    Ok(json
        .get("snapshots")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("manifest-list").and_then(Value::as_str))
        .map(|l| object_key(l).into_owned())
        .collect())
}
