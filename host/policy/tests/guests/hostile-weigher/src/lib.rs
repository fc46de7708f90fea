//! A contribution weigher that passes its checks (the host's golden input is window 1000), then misbehaves in any
//! other window as its config says: `misbehave = trap | spin | weights | zero`.

wit_bindgen::generate!({ path: "../../../../../wit", world: "contribution-weigher" });

use exports::templar::policy::contribution_weighting::{Guest as Weigh, Weighting, WeightingInput};
use exports::templar::policy::describe::{Guest as Describe, Info};

struct Hostile;

impl Weigh for Hostile {
    fn weigh(input: WeightingInput) -> Result<Weighting, String> {
        let misbehave = input
            .config
            .iter()
            .find(|(k, _)| k == "misbehave")
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        let n = input.peers.len();
        if input.chain.window != 1000 {
            match misbehave {
                "trap" => panic!("hostile weigher traps in window {}", input.chain.window),
                "spin" => {
                    let mut x = 0u64;
                    loop {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                "weights" => {
                    return Ok(Weighting {
                        weights: vec![f32::NAN; n],
                        state: vec![],
                        note: "NaN".into(),
                    });
                }
                "zero" => {
                    return Ok(Weighting {
                        weights: vec![1.0; n + 1],
                        state: vec![],
                        note: "one weight too many".into(),
                    });
                }
                _ => {}
            }
        }
        Ok(Weighting {
            weights: input.peers.iter().map(|p| p.selection_weight).collect(),
            state: vec![],
            note: "behaving".into(),
        })
    }
}

impl Describe for Hostile {
    fn describe() -> Info {
        Info {
            name: "hostile-weigher".into(),
            version: "0.1.0".into(),
            policies: vec!["contribution-weighting".into()],
        }
    }
    fn self_check() -> Result<(), String> {
        Ok(())
    }
}

export!(Hostile);
