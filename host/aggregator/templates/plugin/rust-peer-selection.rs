impl PeerSelection for Plugin {
    /// Up to `max_peers` neurons with a bucket, by stake (ties to the lower uid), each weighted 1.0.
    fn select(input: SelectionInput) -> Result<Selection, String> {
        let config = Config::new(&input.config);
        let max_peers: usize = config.get("max_peers", 15)?;
        let peers = Neurons::new(&input.neurons).top_by(max_peers, |n| n.has_bucket.then_some(n.stake));
        log::debug(format!("window {}: {} peers", input.chain.window, peers.len()));
        Ok(Selection {
            note: format!("top {} by stake", peers.len()),
            peers,
            weights: None,
            state: Vec::new(),
        })
    }
}
