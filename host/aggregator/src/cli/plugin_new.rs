//! `aggregator plugin new NAME [--lang rust|python] [--world W]`: writes a ready plugin project, one that builds as
//! written and passes `plugin check`, with a README giving the three commands of an author's loop (build, `plugin
//! check`, `plugin run --receipt`).
//!
//! Rust projects depend on the guest SDK (`components/templar-policy-sdk`) by path; Python projects carry a copy of
//! this host's WIT (`wit/policy.wit`) for componentize-py. The templates are in `host/aggregator/templates/plugin`.

use std::path::{Path, PathBuf};

use aggregator_policy::{PolicyKind, World};
use anyhow::{Context, bail};

/// The plugin's language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// Rust on the guest SDK, built with cargo for wasm32-wasip2.
    Rust,
    /// Python, built with componentize-py.
    Python,
}

/// Arguments of `plugin new`.
#[derive(clap::Args)]
pub struct NewArgs {
    /// The plugin's name: lowercase letters, digits and `-`, starting with a letter (the project directory, the
    /// package name and what `describe` reports).
    name: String,
    /// The language.
    #[arg(long, value_enum, default_value_t = Lang::Rust)]
    lang: Lang,
    /// The world to implement.
    #[arg(long, default_value = "peer-selector")]
    world: World,
    /// Where to create the project directory.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// The guest SDK to depend on (Rust; default: the `components/templar-policy-sdk` of the checkout this binary
    /// was built from).
    #[arg(long)]
    sdk: Option<PathBuf>,
}

/// The SDK of the checkout this binary was built from, if it is still there.
fn default_sdk() -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../components/templar-policy-sdk");
    p.join("Cargo.toml").is_file().then(|| p.canonicalize().ok()).flatten()
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

/// Runs `plugin new`; returns the project directory.
pub fn new(args: NewArgs) -> anyhow::Result<PathBuf> {
    if !valid_name(&args.name) {
        bail!(
            "plugin name {:?}: use lowercase letters, digits and '-', starting with a letter (at most 64)",
            args.name
        );
    }
    let project = args.dir.join(&args.name);
    if project.exists() {
        bail!("{} already exists; choose another name or --dir", project.display());
    }
    let files = match args.lang {
        Lang::Rust => {
            let sdk = match args.sdk.clone().or_else(default_sdk) {
                Some(p) => p,
                None => bail!(
                    "the guest SDK was not found beside this binary's checkout; pass --sdk PATH \
                     (components/templar-policy-sdk of a checkout)"
                ),
            };
            rust_project(&args.name, args.world, &sdk)
        }
        Lang::Python => python_project(&args.name, args.world),
    };
    for (rel, text) in &files {
        let path = project.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!(
        "created {} ({:?}, world {})",
        project.display(),
        args.lang,
        args.world.name()
    );
    for (rel, _) in &files {
        println!("  {rel}");
    }
    println!("next: see {}", project.join("README.md").display());
    Ok(project)
}

const RUST_SNIPPETS: [(PolicyKind, &str, &str); 4] = [
    (
        PolicyKind::PeerSelection,
        "PeerSelection, Selection, SelectionInput",
        include_str!("../../templates/plugin/rust-peer-selection.rs"),
    ),
    (
        PolicyKind::TimeBounds,
        "Bounds, BoundsInput, TimeBounds",
        include_str!("../../templates/plugin/rust-time-bounds.rs"),
    ),
    (
        PolicyKind::CatchupVerification,
        "CatchupVerification, Verdict, VerifyInput",
        include_str!("../../templates/plugin/rust-catchup-verification.rs"),
    ),
    (
        PolicyKind::ContributionWeighting,
        "ContributionWeighting, Weighting, WeightingInput",
        include_str!("../../templates/plugin/rust-contribution-weighting.rs"),
    ),
];

const PY_SNIPPETS: [(PolicyKind, &str, &str); 4] = [
    (
        PolicyKind::PeerSelection,
        "peer_selection",
        include_str!("../../templates/plugin/py-peer-selection.py"),
    ),
    (
        PolicyKind::TimeBounds,
        "time_bounds",
        include_str!("../../templates/plugin/py-time-bounds.py"),
    ),
    (
        PolicyKind::CatchupVerification,
        "catchup_verification",
        include_str!("../../templates/plugin/py-catchup-verification.py"),
    ),
    (
        PolicyKind::ContributionWeighting,
        "contribution_weighting",
        include_str!("../../templates/plugin/py-contribution-weighting.py"),
    ),
];

fn readme(name: &str, world: World, build: &str, wasm: &str, extra: &str) -> String {
    format!(
        "# {name}\n\n\
         A `templar:policy@1.x` plugin (world `{world}`), made by `aggregator plugin new`.\n\n\
         The host runs it in a sandbox: no files, no network, no environment, clocks frozen at the Unix epoch, fixed\n\
         randomness, a fresh instance per call, and fuel, deadline and memory limits per call. Everything a decision may\n\
         depend on is in its input; the same input must give the same decision on every node.\n\n\
         ## The loop\n\n\
         ```sh\n\
         # 1. build\n\
         {build}\n\
         # 2. load it as the daemon would: import audit, self-check, the host's golden inputs, under the limits\n\
         aggregator plugin check {wasm} --world {world}\n\
         # 3. run it on a recorded window (a receipt from an output bucket, a URL or a file) beside the recorded decision\n\
         aggregator plugin run {wasm} --receipt receipt-1234-v0.2.73.json\n\
         ```\n\n\
         Then try it beside the active policy for a while before swapping: a shadow trial (`[policy.shadow]` in the\n\
         daemon's configuration; see the project's components/README.md).\n{extra}",
        world = world.name()
    )
}

fn rust_project(name: &str, world: World, sdk: &Path) -> Vec<(String, String)> {
    let kinds = world.kinds();
    let snippets: Vec<_> = RUST_SNIPPETS.iter().filter(|(k, ..)| kinds.contains(k)).collect();
    let world_types: Vec<&str> = snippets.iter().map(|(_, t, _)| *t).collect();
    let sdk_items = if kinds.contains(&PolicyKind::PeerSelection) {
        "Config, Neurons, SelfCheck, log"
    } else {
        "Config, SelfCheck"
    };
    let mut lib = format!(
        "//! {name}: a `templar:policy@1.x` plugin (world `{w}`), made by `aggregator plugin new`.\n\
         //! Settings (`[policy.settings]` on the host) are read with `Config`; see the SDK's docs for the helpers.\n\n\
         use templar_policy_sdk::{{{sdk_items}}};\n\
         use world::{{{types}}};\n\n\
         struct Plugin;\n\n",
        w = world.name(),
        types = world_types.join(", ")
    );
    for (_, _, s) in &snippets {
        lib.push_str(s);
        lib.push('\n');
    }
    lib.push_str(
        "/// The plugin's own tests, run by the host before it loads the component (the default passes).\n\
         impl SelfCheck for Plugin {}\n\n",
    );
    lib.push_str(&format!(
        "templar_policy_sdk::export!({}: Plugin);\n",
        world.name().replace('-', "_")
    ));
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
         [lib]\ncrate-type = [\"cdylib\"]\n\n\
         [dependencies]\ntemplar-policy-sdk = {{ path = {sdk:?} }}\n\n\
         [profile.release]\nopt-level = \"s\"\nlto = true\ncodegen-units = 1\nstrip = \"debuginfo\"\n\n\
         # A project of its own, even inside another workspace.\n[workspace]\n",
        sdk = sdk.display().to_string()
    );
    let stem = name.replace('-', "_");
    let wasm = format!("target/wasm32-wasip2/release/{stem}.wasm");
    vec![
        ("Cargo.toml".into(), manifest),
        (
            "rust-toolchain.toml".into(),
            "[toolchain]\nchannel = \"1.95.0\"\ntargets = [\"wasm32-wasip2\"]\n".into(),
        ),
        ("src/lib.rs".into(), lib),
        (".gitignore".into(), "/target\n".into()),
        (
            "README.md".into(),
            readme(name, world, "cargo build --release --target wasm32-wasip2", &wasm, ""),
        ),
    ]
}

fn python_project(name: &str, world: World) -> Vec<(String, String)> {
    let kinds = world.kinds();
    let snippets: Vec<_> = PY_SNIPPETS.iter().filter(|(k, ..)| kinds.contains(k)).collect();
    let modules: Vec<&str> = snippets.iter().map(|(_, m, _)| *m).collect();
    let policies: Vec<String> = kinds.iter().map(|k| format!("{:?}", k.interface())).collect();
    let mut app = format!(
        "\"\"\"{name}: a templar:policy@1.x plugin (world `{w}`), made by `aggregator plugin new`.\n\n\
         Built with componentize-py against wit/policy.wit (a copy of the host's WIT); see README.md.\n\"\"\"\n\n\
         import wit_world\n\
         from componentize_py_types import Err\n\
         from wit_world.exports import describe, {modules}\n\
         from wit_world.imports import log\n\n\n\
         def setting(config, key, default, parse):\n    \
             \"\"\"The value of ``key`` parsed with ``parse``, or ``default``; an error names the key and the value.\"\"\"\n    \
             for k, v in config:\n        \
                 if k == key:\n            \
                     try:\n                \
                         return parse(v.strip())\n            \
                     except ValueError:\n                \
                         raise Err(f\"config {{key}}: {{v!r}} is not a valid {{parse.__name__}}\")\n    \
             return default\n\n\n\
         class Describe(wit_world.exports.Describe):\n    \
             def describe(self):\n        \
                 return describe.Info(name={name:?}, version=\"0.1.0\", policies=[{policies}])\n\n    \
             def self_check(self):\n        \
                 \"\"\"The plugin's own tests, run by the host before it loads the component; raise Err to refuse.\"\"\"\n        \
                 return None\n\n\n",
        w = world.name(),
        modules = modules.join(", "),
        policies = policies.join(", ")
    );
    for (_, _, s) in &snippets {
        app.push_str(s);
        app.push_str("\n\n");
    }
    let app = app.trim_end().to_string() + "\n";
    let wasm = format!("{name}.wasm");
    let extra = "\nNeeds `componentize-py` (`pip install componentize-py`). A Python component embeds CPython (about \
                 18 MB): give its kind more memory and fuel on the host with `[policy.limits.<kind>]` (see the \
                 project's components/README.md).\n";
    vec![
        ("app.py".into(), app),
        ("wit/policy.wit".into(), aggregator_policy::WIT.to_string()),
        (".gitignore".into(), "*.wasm\n__pycache__/\n".into()),
        (
            "README.md".into(),
            readme(
                name,
                world,
                &format!("componentize-py -d wit -w {} componentize app -o {wasm}", world.name()),
                &wasm,
                extra,
            ),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(valid_name("my-policy2"));
        for bad in ["", "My", "1a", "a_b", "a-", "../x", "a b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
