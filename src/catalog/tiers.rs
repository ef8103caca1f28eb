//! Size tiers: which of many growing pieces (data files of a partition,
//! manifests of a tenant) to merge, so each byte is rewritten about once per
//! tier instead of at every merge.
//!
//! Merging everything small each time rewrites the newest, growing piece
//! again and again: a tenant-day flushed every 10 s, or a tenant's manifest
//! regrouped every few appends, would rewrite each byte hundreds of times
//! before it is large enough to be left alone. Pieces are grouped in tiers
//! `fanout` times apart; a merge takes the lowest tier that has gathered
//! `min_count` pieces, plus the smaller pieces below it. Between merges a
//! tier holds at most `min_count - 1` pieces.

/// Tier boundaries and the count that triggers a merge.
#[derive(Debug, Clone, Copy)]
pub struct Tiers {
    /// Pieces below `base * fanout` bytes are tier 0.
    pub base: u64,
    /// Each tier holds pieces `fanout` times larger than the one below.
    pub fanout: u64,
    /// Pieces of one tier that trigger a merge (at least 2).
    pub min_count: usize,
}

impl Tiers {
    /// The tier of a piece of `bytes`.
    pub fn tier(&self, bytes: u64) -> u32 {
        let mut tier = 0;
        let mut bound = self.base.saturating_mul(self.fanout);
        // Past the largest representable bound, everything is one tier.
        while bytes >= bound && bound < u64::MAX {
            tier += 1;
            bound = bound.saturating_mul(self.fanout);
        }
        tier
    }

    /// How many of `ascending` (sizes, smallest first) to merge: the pieces
    /// up to the end of the lowest tier holding `min_count`; 0 for none.
    pub fn to_merge(&self, ascending: &[u64]) -> usize {
        let min_count = self.min_count.max(2);
        let mut start = 0;
        while start < ascending.len() {
            let t = self.tier(ascending[start]);
            let end = start
                + ascending[start..]
                    .iter()
                    .take_while(|&&b| self.tier(b) == t)
                    .count();
            if end - start >= min_count {
                return end;
            }
            start = end;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KB: u64 = 1024;
    const MB: u64 = 1024 * 1024;
    const FILES: Tiers = Tiers {
        base: 64 * KB,
        fanout: 4,
        min_count: 4,
    };

    #[test]
    fn tiers_are_fanout_apart() {
        assert_eq!(FILES.tier(1), 0);
        assert_eq!(FILES.tier(255 * KB), 0);
        assert_eq!(FILES.tier(256 * KB), 1);
        assert_eq!(FILES.tier(MB - 1), 1);
        assert_eq!(FILES.tier(MB), 2);
        assert_eq!(FILES.tier(63 * MB), 4);
        assert_eq!(FILES.tier(u64::MAX), 23);
    }

    #[test]
    fn a_grown_piece_is_left_alone_until_its_tier_fills() {
        // Three small pieces and one earlier merge's output: nothing yet.
        assert_eq!(FILES.to_merge(&[30 * KB, 30 * KB, 30 * KB, 2 * MB]), 0);
        // A fourth small piece fills the lowest tier: only that tier merges.
        assert_eq!(
            FILES.to_merge(&[30 * KB, 30 * KB, 30 * KB, 40 * KB, 2 * MB]),
            4
        );
        // Smaller pieces join a merge of the tier above them.
        assert_eq!(
            FILES.to_merge(&[30 * KB, 2 * MB, 2 * MB, 3 * MB, 3 * MB]),
            5
        );
        // Pieces spread over the tiers are left alone, however many.
        let spread = [
            10 * KB,
            100 * KB,
            300 * KB,
            600 * KB,
            2 * MB,
            5 * MB,
            20 * MB,
            30 * MB,
        ];
        assert_eq!(FILES.to_merge(&spread,), 0);
        // A min_count below 2 still needs two pieces to merge.
        let pairs = Tiers {
            min_count: 0,
            ..FILES
        };
        assert_eq!(pairs.to_merge(&[KB]), 0);
        assert_eq!(pairs.to_merge(&[KB, KB]), 2);
    }
}
