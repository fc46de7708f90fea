class CatchupVerification(wit_world.exports.CatchupVerification):
    def verify(self, input):
        """In sync when the mean absolute difference is at most ``max_steps_behind`` learning-rate steps."""
        max_behind = setting(input.config, "max_steps_behind", 3.0, float)
        diffs = [abs(l - r) for s in input.samples for l, r in zip(s.local, s.reference)]
        n, lr = max(len(diffs), 1), input.learning_rate
        inf = float("inf")
        behind = sum(diffs) / n / lr if lr > 0 else inf
        l2 = sum(d * d for d in diffs) ** 0.5
        return catchup_verification.Verdict(
            l2_norm=l2, avg_l2_norm=l2 / n, avg_abs_diff=sum(diffs) / n, max_diff=max(diffs, default=0.0),
            avg_steps_behind=behind, max_steps_behind=max(diffs, default=0.0) / lr if lr > 0 else inf,
            count=len(diffs), in_sync=bool(diffs) and behind <= max_behind,
            note=f"{behind:.3f} steps behind (limit {max_behind})")
