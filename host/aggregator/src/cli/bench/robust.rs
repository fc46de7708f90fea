//! `bench robust`: poisoned gradients against contribution-weighting policies. For each attack, the simulator's
//! miners (honest ones sharing a direction plus noise, and the adversaries) upload for a number of windows; each
//! window goes through the daemon's own steps (the evidence, the policy call in the sandbox, `aggregate_window`) once
//! per policy, and its aggregate is compared sign bit by sign bit with the aggregate of the honest miners alone.
//! A last row runs windows without any adversary, where a robust rule must leave out no one and give the default's
//! bits.

use std::path::PathBuf;
use std::sync::Arc;

use aggregator_codec::{Aggregate, Gradient};
use aggregator_kernels::Cpu;
use aggregator_model::ModelSpec;
use aggregator_policy::kinds::contribution_weighting::WeightingInput;
use aggregator_policy::types::ChainView;
use aggregator_policy::{ContributionWeighting, EMBEDDED_DEFAULT, EXAMPLE_ROBUST, Loaded, PolicyEngine, PolicyLimits};
use aggregator_receipt::{sha256_hex, weighting_input};
use aggregator_sim::adversary::{Adversaries, Attack, COPY_DELAY_MS, Miners};
use aggregator_window::evidence::{self, EvidencePeer};
use aggregator_window::{PeerInput, aggregate_window, sign_agreement};
use anyhow::Context;

/// Arguments of `bench robust`.
#[derive(clap::Args)]
pub struct RobustArgs {
    /// Model preset or file.
    #[arg(long, default_value = "tiny")]
    model: String,
    /// Miners per window (uids 1..=N).
    #[arg(long, default_value_t = 15)]
    peers: u16,
    /// Adversaries among them, for each attack.
    #[arg(long, default_value_t = 4)]
    adversaries: u16,
    /// Windows per attack.
    #[arg(long, default_value_t = 10)]
    windows: u64,
    /// Windows without adversaries (the last row).
    #[arg(long, default_value_t = 50)]
    honest_windows: u64,
    /// The robust policy's component (default: the embedded `example-robust`).
    #[arg(long)]
    robust: Option<PathBuf>,
    /// Policy settings `KEY=VALUE` for both policies (repeatable).
    #[arg(long = "policy-setting", value_name = "KEY=VALUE", value_parser = aggregator_daemon::parse_setting)]
    settings: Vec<(String, String)>,
    /// Seed of the miners' gradients.
    #[arg(long, default_value_t = 2073)]
    seed: u64,
    /// Also print each window's evidence, peer by peer (for tuning a rule's thresholds).
    #[arg(long)]
    show_evidence: bool,
}

/// One policy's figures over the windows of one row.
#[derive(Default)]
struct Column {
    agreement: Vec<f64>,
    honest_excluded: u64,
    adversaries_excluded: u64,
    victims_excluded: u64,
    identical_to_default: u64,
}

/// Runs the benchmark and prints the table.
pub fn robust(args: RobustArgs) -> anyhow::Result<()> {
    let model = Arc::new(ModelSpec::load(&args.model).map_err(|e| anyhow::anyhow!("model: {e}"))?);
    let cpu = Cpu::new();
    let engine = PolicyEngine::new(PolicyLimits::default(), None)?;
    let default = engine.load(EMBEDDED_DEFAULT, "embedded:templar-default")?;
    let robust = match &args.robust {
        Some(f) => engine.load_file(f)?,
        None => engine.load(EXAMPLE_ROBUST, "embedded:example-robust")?,
    };
    let policies = [("default", default), ("robust", robust.clone())];
    println!(
        "bench robust: model {}, {} miners, {} adversaries per attack, {} windows each, {} honest-only windows; \
         robust = {} {}",
        model.name, args.peers, args.adversaries, args.windows, args.honest_windows, robust.name, robust.version
    );
    println!(
        "{:<10} {:<8} {:>22} {:>16} {:>22} {:>16}",
        "attack", "policy", "sign agreement median", "(min)", "honest excluded", "adversaries excl."
    );
    let mut rows: Vec<(String, u16)> = Attack::ALL
        .iter()
        .map(|a| (a.name().to_string(), args.adversaries))
        .collect();
    rows.push(("none".into(), 0));
    for (attack, count) in rows {
        let adversaries = if count == 0 {
            Adversaries::default()
        } else {
            format!("{attack}:{count}").parse().map_err(anyhow::Error::msg)?
        };
        let miners = Miners::new(args.peers, &adversaries, args.seed).map_err(anyhow::Error::msg)?;
        let windows = if count == 0 { args.honest_windows } else { args.windows };
        let mut columns: Vec<Column> = policies.iter().map(|_| Column::default()).collect();
        for w in 1..=windows {
            let window = Window::new(&model, &cpu, &miners, w)?;
            if args.show_evidence {
                window.show(&attack, &miners);
            }
            let honest = window.aggregate(&model, &cpu, |uid| if miners.honest(uid) { 1.0 } else { 0.0 })?;
            let mut first: Option<Vec<u8>> = None;
            for ((_, policy), column) in policies.iter().zip(&mut columns) {
                let weights = window.weigh(&engine, policy, &args.settings)?;
                let agg = window.aggregate(&model, &cpu, |uid| weights[(uid - 1) as usize])?;
                let (compared, agreeing) = sign_agreement(&model, &agg, &honest);
                column.agreement.push(agreeing as f64 / compared.max(1) as f64);
                for uid in 1..=args.peers {
                    if weights[(uid - 1) as usize] == 0.0 {
                        if miners.honest(uid) {
                            column.honest_excluded += 1;
                        } else {
                            column.adversaries_excluded += 1;
                        }
                        let victim = miners
                            .attacks
                            .iter()
                            .any(|(c, a)| *a == Attack::Copy && miners.victim(*c) == uid);
                        column.victims_excluded += victim as u64;
                    }
                }
                let bytes = agg.to_bytes()?;
                match &first {
                    None => first = Some(bytes),
                    Some(b) => column.identical_to_default += (*b == bytes) as u64,
                }
            }
        }
        for ((name, _), c) in policies.iter().zip(&columns) {
            let mut a = c.agreement.clone();
            a.sort_by(f64::total_cmp);
            let median = if a.is_empty() { f64::NAN } else { a[a.len() / 2] };
            let min = a.first().copied().unwrap_or(f64::NAN);
            let possible = count as u64 * windows;
            let mut extra = String::new();
            if *name != "default" {
                extra = format!(
                    "  bit-identical to default in {}/{windows} windows",
                    c.identical_to_default
                );
                if c.victims_excluded > 0 {
                    extra.push_str(&format!("; copy victims excluded {}", c.victims_excluded));
                }
            }
            println!(
                "{:<10} {:<8} {:>22.4} {:>16.4} {:>22} {:>16}{extra}",
                attack,
                name,
                median,
                min,
                format!("{}/{}", c.honest_excluded, (args.peers as u64 - count as u64) * windows),
                format!("{}/{possible}", c.adversaries_excluded),
            );
        }
    }
    Ok(())
}

/// One window's uploads, as the daemon would gather them.
struct Window {
    w: u64,
    /// uid, gradient, LastModified, SHA-256 of the file.
    peers: Vec<(u16, Gradient, u64, String)>,
    /// The evidence input (selection weights 1.0).
    input: WeightingInput,
}

impl Window {
    fn new(model: &ModelSpec, cpu: &Cpu, miners: &Miners, w: u64) -> anyhow::Result<Self> {
        let t0 = 1_700_000_000_000 + w * 60_000;
        // Honest miners upload 1.2–1.7 s after the window's timestamp, as in the simulator; copies two seconds after
        // their victims.
        let at = |uid: u16| t0 + 1200 + (uid as u64 * 97 + w * 31) % 500;
        let mut peers = Vec::new();
        for uid in 1..=miners.peers {
            let u = miners.upload(model, cpu, uid, w).map_err(|e| anyhow::anyhow!("{e}"))?;
            let bytes = u.gradient.to_bytes(model)?;
            let t = match u.copy_of {
                Some(victim) => at(victim) + COPY_DELAY_MS,
                None => at(uid),
            };
            peers.push((uid, u.gradient, t, sha256_hex(&bytes)));
        }
        let ev: Vec<EvidencePeer> = peers
            .iter()
            .map(|(uid, g, t, sha)| EvidencePeer {
                uid: *uid,
                gradient: g,
                weight: 1.0,
                last_modified_ms: *t,
                sha256: Some(sha),
            })
            .collect();
        let stats = evidence::compute(model, &ev);
        let chain = ChainView {
            block: (w + 1) * 10,
            window: w,
            blocks_per_window: 10,
            netuid: 3,
        };
        let input = weighting_input(chain, stats, model.params.len(), vec![]);
        Ok(Self { w, peers, input })
    }

    fn show(&self, attack: &str, miners: &Miners) {
        println!(
            "  {attack} window {}: uid role cosine sign-agreement (compared) majority (voted) overlap similar",
            self.w
        );
        let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.3}"));
        for p in &self.input.peers {
            let role = miners.attacks.get(&p.uid).map_or("honest", |a| a.name());
            let similar: Vec<String> = p
                .similar
                .iter()
                .map(|s| format!("{}:{:.2}{}", s.uid, s.overlap, if s.identical { "=" } else { "" }))
                .collect();
            println!(
                "  {:>4} {:<9} {:>6} {:>6} ({:>5}) {:>6} ({:>5}) {:.3} {}",
                p.uid,
                role,
                f(p.cosine),
                f(p.sign_agreement),
                p.compared,
                f(p.majority_agreement),
                p.voted,
                p.index_overlap,
                similar.join(" ")
            );
        }
    }

    fn weigh(&self, engine: &PolicyEngine, policy: &Loaded, settings: &[(String, String)]) -> anyhow::Result<Vec<f32>> {
        let mut input = self.input.clone();
        input.config = settings.to_vec();
        let called = engine
            .run::<ContributionWeighting>(policy, &input)
            .with_context(|| format!("{} in window {}", policy.name, self.w))?;
        Ok(called.value.weights)
    }

    fn aggregate(&self, model: &ModelSpec, cpu: &Cpu, weight: impl Fn(u16) -> f32) -> anyhow::Result<Aggregate> {
        // The inputs borrow nothing: cloning the gradients keeps the window's own for the next policy.
        let inputs: Vec<(u16, PeerInput<String>)> = self
            .peers
            .iter()
            .map(|(uid, g, ..)| {
                (
                    *uid,
                    PeerInput::Valid {
                        gradient: g.clone(),
                        weight: weight(*uid),
                    },
                )
            })
            .collect();
        let a = aggregate_window(
            model,
            cpu,
            self.w as i64,
            "0.2.73",
            &inputs,
            "2026-01-01T00:00:00+00:00".into(),
        )?;
        a.file.context("no aggregate")
    }
}
