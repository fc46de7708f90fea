class TimeBounds(wit_world.exports.TimeBounds):
    def compute(self, input):
        """``[T, T + window_seconds]`` from the chain's timestamp at the sync block; no fallback without one."""
        seconds = setting(input.config, "window_seconds", 10, int)
        if input.sync_timestamp_ms is None:
            raise Err(f"no timestamp for sync block {input.sync_block}")
        t = input.sync_timestamp_ms
        return time_bounds.Bounds(not_before_ms=t, not_after_ms=t + seconds * 1000, note=f"chain timestamp + {seconds} s")
