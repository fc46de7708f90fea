class PeerSelection(wit_world.exports.PeerSelection):
    def select(self, input):
        """Up to ``max_peers`` neurons with a bucket, by stake (ties to the lower uid), each weighted 1.0."""
        max_peers = setting(input.config, "max_peers", 15, int)
        ranked = sorted((n for n in input.neurons if n.has_bucket), key=lambda n: (-n.stake, n.uid))
        peers = [n.uid for n in ranked[:max_peers]]
        log.log(log.Level.DEBUG, f"window {input.chain.window}: {len(peers)} peers")
        return peer_selection.Selection(peers=peers, weights=None, state=b"", note=f"top {len(peers)} by stake")
