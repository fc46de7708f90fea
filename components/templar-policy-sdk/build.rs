//! Writes `world_macro.rs`: the macro that generates a world's export bindings *in the plugin crate*, with the WIT
//! text inlined.
//!
//! Why generated: wit-bindgen names each interface's export glue after the interface, so one crate cannot hold the
//! export bindings of two worlds that export the same interface (`describe` is in all four). Each plugin therefore
//! generates its own world's exports, while the shared `types` and `log` interfaces are generated once, here, and
//! reused (`with`), so that a `Neuron` is the same Rust type in the SDK's helpers and in every plugin. `generate!`
//! takes only a string literal, so the WIT is written into the macro as one.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let wit = manifest.join("../../wit/policy.wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    let text = std::fs::read_to_string(&wit).unwrap_or_else(|e| panic!("reading {}: {e}", wit.display()));
    assert!(
        !text.contains("\"####"),
        "policy.wit must not contain the raw-string delimiter"
    );
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("world_macro.rs");
    let src = format!(
        r#####"/// Generates world `$world`'s bindings in the calling module (see build.rs).
#[doc(hidden)]
#[macro_export]
macro_rules! __generate_world {{
    ($world:tt, $module:tt) => {{
        $crate::__rt::generate!({{
            inline: r####"{text}"####,
            world: $world,
            runtime_path: "templar_policy_sdk::__rt::rt",
            default_bindings_module: $module,
            with: {{
                "templar:policy/types@1.1.0": templar_policy_sdk::__bindings::templar::policy::types,
                "templar:policy/log@1.1.0": templar_policy_sdk::__bindings::templar::policy::log,
            }},
        }});
    }};
}}
"#####
    );
    std::fs::write(&out, src).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}
