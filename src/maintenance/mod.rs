//! Table maintenance: compaction ([`compact`]), snapshot expiry and the
//! cleanup of what expired snapshots referenced ([`expire`]), orphan files
//! ([`orphans`]), per-project retention ([`retention`]) and deletion
//! ([`offboard`]), and the background schedule that runs them
//! ([`schedule`]).

pub mod compact;
pub mod expire;
pub mod offboard;
pub mod orphans;
pub mod retention;
pub mod schedule;
pub mod views;

pub use expire::{ExpireReport, Retention, expire_and_clean};
pub use orphans::{OrphanReport, delete_orphans, find_orphan_files};
