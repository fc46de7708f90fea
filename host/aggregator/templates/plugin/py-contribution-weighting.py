class ContributionWeighting(wit_world.exports.ContributionWeighting):
    def weigh(self, input):
        """Leaves out a peer whose agreement with the others' majority sign is below ``min_agreement`` (over at
        least 64 compared coefficients); everyone else keeps the selection weight."""
        min_agreement = setting(input.config, "min_agreement", 0.5, float)
        weights = [
            0.0 if p.majority_agreement is not None and p.voted >= 64 and p.majority_agreement < min_agreement
            else p.selection_weight
            for p in input.peers
        ]
        left_out = sum(1 for w in weights if w == 0.0)
        return contribution_weighting.Weighting(weights=weights, state=b"", note=f"{left_out} at weight 0")
