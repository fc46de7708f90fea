//! Implements `templar:policy@2.0.0`, which this host does not speak.

wit_bindgen::generate!({ path: "wit", world: "peer-selector" });

struct Wrong;

impl exports::templar::policy::peer_selection::Guest for Wrong {
    fn select(_window: u64, uids: Vec<u32>) -> Vec<u32> {
        uids
    }
}

impl exports::templar::policy::describe::Guest for Wrong {
    fn describe() -> exports::templar::policy::describe::Info {
        exports::templar::policy::describe::Info {
            name: "wrong".into(),
            version: "2.0.0".into(),
            policies: vec![],
        }
    }
    fn self_check() -> Result<(), String> {
        Ok(())
    }
}

export!(Wrong);
