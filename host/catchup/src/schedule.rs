//! Templar's learning-rate schedule (spec §7.3): `SequentialLR([LinearLR(0.1 → 1.0, 250 steps),
//! CosineAnnealingWarmRestarts(T_0 = t_max, T_mult = 2, eta_min = 0.1·lr)], milestones = [250])`, in f64 with
//! torch's operation order (the warm-up is torch's recurrence, not the closed form), so the values are torch's.

/// The schedule's parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Base learning rate (Templar: 4e-4).
    pub lr: f64,
    /// `T_0` of the cosine restarts (Templar: 20000).
    pub t_max: u64,
    /// Warm-up steps (hard-coded 250 in Templar).
    pub warmup: u64,
    /// Weight decay (Templar: 0).
    pub weight_decay: f64,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            lr: 4e-4,
            t_max: 20_000,
            warmup: 250,
            weight_decay: 0.0,
        }
    }
}

impl Schedule {
    /// The learning rate after `t` scheduler steps.
    pub fn lr_at(&self, t: u64) -> f64 {
        let (start, end) = (0.1f64, 1.0f64);
        if t < self.warmup {
            // torch.optim.lr_scheduler.LinearLR.get_lr, applied step by step.
            let mut lr = self.lr * start;
            for i in 1..=t {
                lr *= 1.0 + (end - start) / (self.warmup as f64 * start + (i - 1) as f64 * (end - start));
            }
            return lr;
        }
        // CosineAnnealingWarmRestarts with T_mult = 2.
        let eta_min = 0.1 * self.lr;
        let (mut u, mut t_i) = (t - self.warmup, self.t_max.max(1));
        while u >= t_i {
            u -= t_i;
            t_i *= 2;
        }
        eta_min + (self.lr - eta_min) * (1.0 + (std::f64::consts::PI * u as f64 / t_i as f64).cos()) / 2.0
    }

    /// The scheduler step of window `w` when the network started at `start_window`: the first applied window is
    /// `start_window + 1` (spec §7.2), and every later window steps the schedule once, applied or missing.
    pub fn step_of(window: u64, start_window: u64) -> u64 {
        window.saturating_sub(start_window + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_closed_forms() {
        let s = Schedule::default();
        assert_eq!(s.lr_at(0), 4e-5);
        for t in [1u64, 100, 249] {
            let closed = 4e-4 * (0.1 + 0.9 * t as f64 / 250.0);
            assert!((s.lr_at(t) - closed).abs() < 1e-18, "t={t}");
        }
        assert_eq!(s.lr_at(250), 4e-4);
        assert!((s.lr_at(250 + 10_000) - (0.4e-4 + 3.6e-4 * 0.5)).abs() < 1e-18);
        assert_eq!(s.lr_at(250 + 20_000), 4e-4, "warm restart");
        assert_eq!(s.lr_at(250 + 20_000 + 40_000), 4e-4, "second restart after 2·T_0");
        assert_eq!(Schedule::step_of(101, 100), 0);
        assert_eq!(Schedule::step_of(110, 100), 9);
    }
}
