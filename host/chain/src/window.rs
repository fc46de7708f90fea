//! Windows are counted in blocks (spec §5.2): `window = block / blocks_per_window`; window `w` is closed when block
//! `(w + 1) · blocks_per_window` (its *sync block*) is seen.

/// The window of `block`.
pub fn window_of(block: u64, blocks_per_window: u32) -> u64 {
    block / blocks_per_window.max(1) as u64
}

/// The first block of window `w + 1`: when it appears, window `w` is closed; its timestamp anchors `w`'s time bounds.
pub fn sync_block(window: u64, blocks_per_window: u32) -> u64 {
    (window + 1).saturating_mul(blocks_per_window.max(1) as u64)
}

/// Windows closed since the previous observation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// Closed windows to process, oldest first.
    pub windows: Vec<u64>,
    /// Closed windows left out because there were more than the backfill limit (the oldest ones).
    pub skipped: u64,
}

/// Turns observed head blocks (which may jump, repeat or go back after a reconnect) into the windows that closed, so
/// that none is lost: after a gap every window that ended meanwhile is reported, up to `max_backfill` (the newest).
#[derive(Debug, Clone)]
pub struct WindowTracker {
    blocks_per_window: u32,
    max_backfill: u64,
    last_closed: Option<u64>,
}

impl WindowTracker {
    /// A tracker that resumes after window `last_processed` (persisted state), or starts fresh.
    pub fn new(blocks_per_window: u32, max_backfill: u64, last_processed: Option<u64>) -> Self {
        Self {
            blocks_per_window: blocks_per_window.max(1),
            max_backfill: max_backfill.max(1),
            last_closed: last_processed,
        }
    }

    /// Blocks per window.
    pub fn blocks_per_window(&self) -> u32 {
        self.blocks_per_window
    }

    /// The last window reported closed.
    pub fn last_closed(&self) -> Option<u64> {
        self.last_closed
    }

    /// Reports the windows closed up to `head`. A fresh tracker reports only the newest closed window.
    pub fn observe(&mut self, head: u64) -> Closed {
        let current = window_of(head, self.blocks_per_window);
        let Some(newest_closed) = current.checked_sub(1) else {
            return Closed {
                windows: vec![],
                skipped: 0,
            };
        };
        let first = match self.last_closed {
            None => newest_closed,
            Some(last) if newest_closed <= last => {
                return Closed {
                    windows: vec![],
                    skipped: 0,
                };
            }
            Some(last) => last + 1,
        };
        let count = newest_closed - first + 1;
        let skipped = count.saturating_sub(self.max_backfill);
        self.last_closed = Some(newest_closed);
        Closed {
            windows: (first + skipped..=newest_closed).collect(),
            skipped,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic() {
        assert_eq!(
            (window_of(700, 7), window_of(706, 7), window_of(707, 7)),
            (100, 100, 101)
        );
        assert_eq!(sync_block(100, 7), 707);
    }

    #[test]
    fn every_closed_window_is_reported_once_even_across_gaps() {
        let mut t = WindowTracker::new(7, 100, None);
        assert_eq!(t.observe(703).windows, [99], "fresh: the newest closed window");
        assert!(t.observe(705).windows.is_empty());
        assert_eq!(t.observe(707).windows, [100]);
        assert!(t.observe(707).windows.is_empty(), "a repeated head reports nothing");
        // A reconnect after a gap: windows 101..=104 ended meanwhile.
        assert_eq!(t.observe(7 * 105 + 2).windows, [101, 102, 103, 104]);
        assert!(
            t.observe(7 * 103).windows.is_empty(),
            "a stale head after a reorg or reconnect reports nothing"
        );
        // Resuming from persisted state, with a backfill limit of 3.
        let mut r = WindowTracker::new(7, 3, Some(100));
        assert_eq!(r.observe(7 * 110).windows, [107, 108, 109]);
        assert_eq!(r.last_closed(), Some(109));
        assert_eq!(WindowTracker::new(7, 3, Some(100)).observe(7 * 110).skipped, 6);
        assert!(
            WindowTracker::new(7, 3, None).observe(3).windows.is_empty(),
            "nothing closed in window 0"
        );
    }
}
