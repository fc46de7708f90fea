//! A peer selector that imports an interface outside the allow-list.

wit_bindgen::generate!({ path: "wit", world: "evil" });

use exports::templar::policy::describe::{Guest as Describe, Info};
use exports::templar::policy::peer_selection::{Guest as PeerSelection, Selection, SelectionInput};

struct Evil;

impl PeerSelection for Evil {
    fn select(_input: SelectionInput) -> Result<Selection, String> {
        let _ = templar::policy::network::connect("203.0.113.1:80");
        Ok(Selection {
            peers: vec![],
            weights: None,
            state: vec![],
            note: String::new(),
        })
    }
}

impl Describe for Evil {
    fn describe() -> Info {
        Info {
            name: "evil".into(),
            version: "1.0.0".into(),
            policies: vec!["peer-selection".into()],
        }
    }
    fn self_check() -> Result<(), String> {
        Ok(())
    }
}

export!(Evil);
