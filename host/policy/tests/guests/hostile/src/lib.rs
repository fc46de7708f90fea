//! A peer selector that passes its checks, then misbehaves when its config says `misbehave = …` and it already has
//! peers (`current` is not empty): the host's golden inputs (start-up, no peers yet) never show it, real windows do.

wit_bindgen::generate!({ path: "../../../../../wit", world: "peer-selector" });

use exports::templar::policy::describe::{Guest as Describe, Info};
use exports::templar::policy::peer_selection::{Guest as PeerSelection, Selection, SelectionInput};

struct Hostile;

/// With `fs` or `net`, touches something outside the sandbox (and so imports it).
#[cfg(feature = "fs")]
fn outside() -> Option<String> {
    Some(format!(
        "read /etc/passwd: {:?}",
        std::fs::read_to_string("/etc/passwd").map(|s| s.len())
    ))
}
#[cfg(all(feature = "net", not(feature = "fs")))]
fn outside() -> Option<String> {
    Some(format!(
        "connect: {:?}",
        std::net::TcpStream::connect("127.0.0.1:22").map(|_| ())
    ))
}
#[cfg(not(any(feature = "fs", feature = "net")))]
fn outside() -> Option<String> {
    None
}

impl PeerSelection for Hostile {
    fn select(input: SelectionInput) -> Result<Selection, String> {
        if let Some(e) = outside() {
            return Err(e);
        }
        let mode = input
            .config
            .iter()
            .find(|(k, _)| k == "misbehave" && !input.current.is_empty())
            .map(|(_, v)| v.as_str())
            .unwrap_or("");
        match mode {
            "spin" => {
                let mut x = 0u64;
                loop {
                    x = x.wrapping_add(1);
                    core::hint::black_box(x);
                }
            }
            "oom" => {
                // Try to allocate 4 GiB, 1 MiB at a time.
                let mut hog: Vec<Vec<u8>> = Vec::new();
                for _ in 0..4096 {
                    hog.push(vec![1u8; 1 << 20]);
                    core::hint::black_box(&hog);
                }
                Err(format!("allocated {} MiB", hog.len()))
            }
            "panic" => panic!("hostile policy panics on purpose (window {})", input.chain.window),
            "error" => Err("hostile policy refuses this input".into()),
            // `weights=1,nan,-1`: peers 1, 2, 3, … with these weights (as Rust parses `f32`s).
            w if w.starts_with("weights=") => {
                let weights: Vec<f32> = w["weights=".len()..]
                    .split(',')
                    .map(|x| x.trim().parse().map_err(|_| format!("weight {x:?}")))
                    .collect::<Result<_, _>>()?;
                Ok(Selection {
                    peers: (1..=weights.len() as u16).collect(),
                    weights: Some(weights),
                    state: vec![],
                    note: "weights from config".into(),
                })
            }
            "bad-weights" => Ok(Selection {
                peers: vec![1, 2],
                weights: Some(vec![1.0]),
                state: vec![],
                note: String::new(),
            }),
            _ => {
                let peers: Vec<u16> = input
                    .neurons
                    .iter()
                    .filter(|n| n.has_bucket)
                    .map(|n| n.uid)
                    .take(3)
                    .collect();
                Ok(Selection {
                    peers,
                    weights: None,
                    state: vec![],
                    note: "first three with buckets".into(),
                })
            }
        }
    }
}

impl Describe for Hostile {
    fn describe() -> Info {
        let (name, version) = if cfg!(feature = "alt") {
            ("hostile-alt", "2.0.0")
        } else {
            ("hostile", "1.0.0")
        };
        Info {
            name: name.into(),
            version: version.into(),
            policies: vec!["peer-selection".into()],
        }
    }
    fn self_check() -> Result<(), String> {
        #[cfg(feature = "selfcheck-spin")]
        loop {
            core::hint::black_box(0u8);
        }
        #[allow(unreachable_code)]
        Ok(())
    }
}

export!(Hostile);
