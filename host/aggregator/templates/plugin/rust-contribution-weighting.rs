impl ContributionWeighting for Plugin {
    /// Leaves out a peer whose agreement with the others' majority sign is below `min_agreement` (over at least
    /// 64 compared coefficients); everyone else keeps the selection weight.
    fn weigh(input: WeightingInput) -> Result<Weighting, String> {
        let min_agreement: f64 = Config::new(&input.config).get("min_agreement", 0.5)?;
        let weights: Vec<f32> = input
            .peers
            .iter()
            .map(|p| match p.majority_agreement {
                Some(a) if p.voted >= 64 && a < min_agreement => 0.0,
                _ => p.selection_weight,
            })
            .collect();
        let left_out = weights.iter().filter(|w| **w == 0.0).count();
        Ok(Weighting {
            weights,
            state: vec![],
            note: format!("{left_out} at weight 0"),
        })
    }
}
