//! A peer selector built against `templar:policy@1.0.0` (`wit/` holds the 1.0.0 contract as released), for the
//! semver test: it must load and answer on every 1.x host. It selects the posted list's first three peers.

wit_bindgen::generate!({ path: "wit", world: "peer-selector" });

use exports::templar::policy::describe::{Guest as Describe, Info};
use exports::templar::policy::peer_selection::{Guest as PeerSelection, Selection, SelectionInput};

struct V10;

impl PeerSelection for V10 {
    fn select(input: SelectionInput) -> Result<Selection, String> {
        let peers = input
            .latest
            .map(|l| l.peers.into_iter().take(3).collect())
            .unwrap_or_default();
        Ok(Selection {
            peers,
            weights: None,
            state: vec![],
            note: "built against 1.0.0".into(),
        })
    }
}

impl Describe for V10 {
    fn describe() -> Info {
        Info {
            name: "v1-0".into(),
            version: "1.0.0".into(),
            policies: vec!["peer-selection".into()],
        }
    }
    fn self_check() -> Result<(), String> {
        Ok(())
    }
}

export!(V10);
