impl TimeBounds for Plugin {
    /// `[T, T + window_seconds]` from the chain's timestamp at the sync block; no fallback without one.
    fn compute(input: BoundsInput) -> Result<Bounds, String> {
        let seconds: u64 = Config::new(&input.config).get("window_seconds", 10)?;
        let t = input
            .sync_timestamp_ms
            .ok_or_else(|| format!("no timestamp for sync block {}", input.sync_block))?;
        Ok(Bounds {
            not_before_ms: t,
            not_after_ms: t.saturating_add(seconds.saturating_mul(1000)),
            note: format!("chain timestamp + {seconds} s"),
        })
    }
}
