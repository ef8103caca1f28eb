//! Which buffered rows a flush writes and which it holds back.
//!
//! Every flush used to write one file into every partition that had rows.
//! With 50 tenants over two days, 100 partitions got a file per 10 s
//! flush, most of a few hundred rows, which compaction then rewrote (on
//! S3, a compaction run over them outlasted two flushes). So a project
//! with little buffered waits for more, up to an age, and its rows are
//! written together: one file where there were six. The table records
//! what is held back ([`Committed`]), so a restart or another node
//! recovers exactly those rows from the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ingest::buffer::{Generation, Request};

/// When a flush holds a project's rows back.
#[derive(Debug, Clone, Copy)]
pub struct HoldPolicy {
    /// Hold while a project has fewer Arrow bytes buffered than this.
    pub min_bytes: usize,
    /// Write a project's rows once the oldest is this old.
    pub max_age: Duration,
    /// Hold at most this many bytes in all (the smallest projects first):
    /// held rows take ingest memory.
    pub max_bytes: usize,
}

/// What one flush commits.
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// The sealed generation's requests (ids with the rows written now)
    /// and the held rows now due, anonymous.
    pub requests: Vec<Request>,
    /// Projects held back, with their first segment held.
    pub held: BTreeMap<String, u64>,
}

/// Plan the flush of `generation` after the `held` parts of earlier
/// segments: with no `policy`, everything is written.
pub(super) fn plan(
    held: &[Arc<Generation>],
    generation: &Generation,
    policy: Option<&HoldPolicy>,
    now: Instant,
) -> Plan {
    struct Project {
        bytes: usize,
        first: u64,
        since: Option<Instant>,
    }
    let mut projects: HashMap<&str, Project> = HashMap::new();
    for g in held.iter().map(Arc::as_ref).chain([generation]) {
        for (project, bytes) in g.project_bytes() {
            let Some(project) = project else { continue };
            let p = projects.entry(project).or_insert(Project {
                bytes: 0,
                first: g.seq,
                since: g.since,
            });
            p.bytes += bytes;
            p.first = p.first.min(g.seq);
            p.since = match (p.since, g.since) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
    }
    let mut kept = BTreeMap::new();
    if let Some(policy) = policy {
        let mut small: Vec<(&str, &Project)> = projects
            .iter()
            .filter(|(_, p)| {
                p.bytes < policy.min_bytes
                    && p.since
                        .is_none_or(|t| now.saturating_duration_since(t) < policy.max_age)
            })
            .map(|(name, p)| (*name, p))
            .collect();
        small.sort_by_key(|(name, p)| (p.bytes, *name));
        let mut total = 0;
        for (name, p) in small {
            total += p.bytes;
            if total > policy.max_bytes {
                break;
            }
            kept.insert(name.to_string(), p.first);
        }
    }
    let written = |parts: &[(Option<String>, arrow::array::RecordBatch)]| {
        parts
            .iter()
            .filter(|(p, _)| p.as_ref().is_none_or(|p| !kept.contains_key(p)))
            .cloned()
            .collect::<Vec<_>>()
    };
    let mut requests = vec![];
    for g in held {
        for r in g.requests() {
            let parts = written(&r.parts);
            if !parts.is_empty() {
                requests.push(Request {
                    id: None,
                    rows: parts.iter().map(|(_, b)| b.num_rows() as u64).sum(),
                    parts,
                });
            }
        }
    }
    // Every request of the segment, even one whose rows are all held:
    // its id is recorded with this commit, as its rows are durable.
    requests.extend(generation.requests().iter().map(|r| Request {
        id: r.id.clone(),
        rows: r.rows,
        parts: written(&r.parts),
    }));
    Plan {
        requests,
        held: kept,
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{RecordBatch, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::ingest::buffer::Committed;
    use crate::schema::col;

    fn rows(project: &str, n: usize) -> RecordBatch {
        let schema = Schema::new(vec![Field::new(col::PROJECT_ID, DataType::Utf8, false)]);
        let ids = StringArray::from(vec![project; n]);
        RecordBatch::try_new(Arc::new(schema), vec![Arc::new(ids)]).unwrap()
    }

    fn generation(seq: u64, requests: &[(&str, &[(&str, usize)])]) -> Generation {
        let mut g = Generation::new(seq);
        for (id, parts) in requests {
            let batches = parts.iter().map(|(p, n)| rows(p, *n)).collect();
            g.add(batches, Some(id.to_string()), None).unwrap();
        }
        g
    }

    /// Each request's id and rows recorded.
    type Ids = Vec<(Option<String>, u64)>;

    /// Rows written per project, and the ids recorded.
    fn written(plan: &Plan) -> (BTreeMap<String, usize>, Ids) {
        let mut by_project = BTreeMap::new();
        for (p, b) in plan.requests.iter().flat_map(|r| &r.parts) {
            *by_project.entry(p.clone().unwrap()).or_default() += b.num_rows();
        }
        let ids = plan
            .requests
            .iter()
            .map(|r| (r.id.clone(), r.rows))
            .collect();
        (by_project, ids)
    }

    /// Hold below `min` rows of [`rows`], at most `max` rows in all, 60 s.
    fn policy_in_rows(min: usize, max: Option<usize>) -> HoldPolicy {
        let row_bytes = crate::batch::batch_bytes(&rows("a", 1_000)) / 1_000;
        HoldPolicy {
            min_bytes: min * row_bytes,
            max_age: Duration::from_secs(60),
            max_bytes: max.map_or(usize::MAX, |m| m * row_bytes),
        }
    }

    #[test]
    fn small_projects_wait_until_large_or_old_and_are_then_written_together() {
        let policy = policy_in_rows(5_000, None);
        let first = generation(
            1,
            &[
                ("r1", &[("big", 9_000), ("small", 100)]),
                ("r2", &[("small", 50)]),
            ],
        );
        let now = Instant::now();
        let plan1 = plan(&[], &first, Some(&policy), now);
        let (by_project, ids) = written(&plan1);
        assert_eq!(by_project, BTreeMap::from([("big".to_string(), 9_000)]));
        // Every id is recorded with its segment, with the rows it brought,
        // even one whose rows are all held.
        assert_eq!(
            ids,
            vec![(Some("r1".into()), 9_100), (Some("r2".into()), 50)]
        );
        assert_eq!(plan1.held, BTreeMap::from([("small".to_string(), 1)]));
        let committed = Committed {
            mark: Some(1),
            held: plan1.held.clone(),
        };
        let held = Arc::new(first.held_part(|p| !committed.holds(1, Some(p))).unwrap());
        assert_eq!((held.rows, held.held), (150, true));
        assert_eq!(
            committed.done_through(),
            Some(0),
            "segment 1 is still needed"
        );

        // Still small a flush later: held from segment 1 on.
        let second = generation(2, &[("r3", &[("small", 10), ("other", 10)])]);
        let plan2 = plan(std::slice::from_ref(&held), &second, Some(&policy), now);
        assert!(written(&plan2).0.is_empty());
        assert_eq!(
            plan2.held,
            BTreeMap::from([("small".to_string(), 1), ("other".to_string(), 2)])
        );

        // Grown past the size: written, the held rows with the new ones,
        // and the held ones anonymous (their ids went with segment 1).
        let third = generation(3, &[("r4", &[("small", 5_000)])]);
        let plan3 = plan(std::slice::from_ref(&held), &third, Some(&policy), now);
        let (by_project, ids) = written(&plan3);
        assert_eq!(by_project, BTreeMap::from([("small".to_string(), 5_150)]));
        assert_eq!(
            ids,
            vec![(None, 100), (None, 50), (Some("r4".into()), 5_000)]
        );
        assert!(plan3.held.is_empty());

        // Or grown old; and without a policy everything is written.
        let later = now + policy.max_age;
        let plan4 = plan(std::slice::from_ref(&held), &second, Some(&policy), later);
        assert_eq!(written(&plan4).0.get("small"), Some(&160));
        assert_eq!(plan4.held, BTreeMap::from([("other".to_string(), 2)]));
        let plan5 = plan(std::slice::from_ref(&held), &second, None, now);
        assert_eq!(written(&plan5).0.len(), 2);
        assert!(plan5.held.is_empty());
    }

    #[test]
    fn held_bytes_are_bounded_the_smallest_projects_held_first() {
        let policy = policy_in_rows(10_000, Some(2_500));
        let g = generation(7, &[("r", &[("a", 1_000), ("b", 2_000), ("c", 500)])]);
        let p = plan(&[], &g, Some(&policy), Instant::now());
        assert_eq!(
            p.held,
            BTreeMap::from([("a".to_string(), 7), ("c".to_string(), 7)])
        );
        assert_eq!(written(&p).0, BTreeMap::from([("b".to_string(), 2_000)]));
    }

    #[test]
    fn the_table_holds_a_segment_except_its_held_projects() {
        let c = Committed {
            mark: Some(9),
            held: BTreeMap::from([("a".to_string(), 4), ("b-2_x".to_string(), 7)]),
        };
        assert!(c.holds(3, Some("a")) && !c.holds(4, Some("a")) && !c.holds(9, Some("a")));
        assert!(c.holds(9, Some("c")) && !c.holds(10, Some("c")) && c.holds(9, None));
        assert_eq!(c.done_through(), Some(3));
        let encoded = Committed::encode_held(&c.held);
        assert_eq!(encoded, "a=4,b-2_x=7");
        assert_eq!(Committed::decode_held(&encoded), c.held);
        assert!(Committed::decode_held("").is_empty());
        let none = Committed {
            mark: None,
            held: BTreeMap::new(),
        };
        assert!(!none.holds(1, Some("a")) && none.done_through().is_none());
    }
}
