impl CatchupVerification for Plugin {
    /// In sync when the mean absolute difference is at most `max_steps_behind` learning-rate steps.
    fn verify(input: VerifyInput) -> Result<Verdict, String> {
        let max_behind: f64 = Config::new(&input.config).get("max_steps_behind", 3.0)?;
        let (mut sq, mut abs, mut max, mut count) = (0f64, 0f64, 0f64, 0u32);
        for s in &input.samples {
            for (l, r) in s.local.iter().zip(&s.reference) {
                let d = (l - r).abs();
                (sq, abs, max, count) = (sq + d * d, abs + d, max.max(d), count + 1);
            }
        }
        let n = f64::from(count.max(1));
        let lr = input.learning_rate;
        let behind = if lr > 0.0 { abs / n / lr } else { f64::INFINITY };
        Ok(Verdict {
            l2_norm: sq.sqrt(),
            avg_l2_norm: sq.sqrt() / n,
            avg_abs_diff: abs / n,
            max_diff: max,
            avg_steps_behind: behind,
            max_steps_behind: if lr > 0.0 { max / lr } else { f64::INFINITY },
            count,
            in_sync: count > 0 && behind <= max_behind,
            note: format!("{behind:.3} steps behind (limit {max_behind})"),
        })
    }
}
