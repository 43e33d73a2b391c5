//! Golden files: every example node in docs/examples renders to exactly the
//! files under tests/golden/<example>/. Regenerate after an intended
//! template change with `UPDATE_GOLDEN=1 cargo test -p kraken-render`, and
//! read the diff.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kraken_discovery::Peers;
use kraken_identity::Identity;
use kraken_intent::NodeSpec;
use kraken_render::{RenderSecrets, Renderer};
use kraken_secrets::Secret;
use kraken_settings::Settings;
use serde::Deserialize;

#[derive(Deserialize)]
struct NodeFile {
    identity: Identity,
    peers: Peers,
}

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "examples missing in {}", dir.display());
    files
}

fn render(path: &Path, settings: &Settings) -> BTreeMap<String, String> {
    render_with(path, settings, &RenderSecrets::default())
}

fn render_with(
    path: &Path,
    settings: &Settings,
    secrets: &RenderSecrets,
) -> BTreeMap<String, String> {
    let node: NodeFile = toml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let spec = NodeSpec::from_tags(&node.identity.tags, &settings.intent).unwrap();
    Renderer::new(None)
        .unwrap()
        .render(&node.identity, &spec, &node.peers, settings, secrets)
        .unwrap()
        .into_iter()
        .map(|f| (f.file_name().to_owned(), f.contents))
        .collect()
}

#[test]
fn examples_match_golden_files() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut checked = 0;
    // Every example without secrets (as `render --node` writes it), and the
    // all-roles node once more with every secret present (as `run` does).
    let fake = |s: &str| Some(Secret::new(s));
    let secrets = RenderSecrets {
        gossip_key: fake("a3Jha2VuIGdvbGRlbiBmaWxlLCBub3QgYSBrZXkhISE="),
        initial_management: fake("00000000-1111-2222-3333-444444444444"),
        consul_agent: fake("55555555-6666-7777-8888-999999999999"),
        nomad_consul: fake("aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
        nomad_gossip_key: fake("bm9tYWQgZ29sZGVuIGZpbGUsIG5vdCBhIGtleSEhISE="),
    };
    let mut cases: Vec<(String, BTreeMap<String, String>)> = examples()
        .iter()
        .map(|e| {
            let name = e.file_stem().unwrap().to_string_lossy().into_owned();
            (name, render(e, &Settings::default()))
        })
        .collect();
    let single = examples()
        .into_iter()
        .find(|e| e.ends_with("single-node.toml"))
        .unwrap();
    cases.push((
        "single-node-with-secrets".into(),
        render_with(&single, &Settings::default(), &secrets),
    ));
    for (name, rendered) in cases {
        let dir = golden.join(&name);
        if update {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            for (file, contents) in &rendered {
                std::fs::write(dir.join(file), contents).unwrap();
            }
        }
        let mut expected: Vec<String> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}; run with UPDATE_GOLDEN=1", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        expected.sort();
        assert_eq!(
            rendered.keys().cloned().collect::<Vec<_>>(),
            expected,
            "files rendered for {name}"
        );
        for (file, contents) in rendered {
            let want = std::fs::read_to_string(dir.join(&file)).unwrap();
            assert_eq!(contents, want, "{name}/{file} differs from its golden file");
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} files checked");
}

#[test]
fn rendering_is_deterministic_whatever_the_peer_order() {
    let example = examples().into_iter().next().unwrap();
    let a = render(&example, &Settings::default());
    let mut node: toml::Value =
        toml::from_str(&std::fs::read_to_string(&example).unwrap()).unwrap();
    if let Some(list) = node["peers"]["consul_servers"].as_array_mut() {
        list.reverse();
    }
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), toml::to_string(&node).unwrap()).unwrap();
    assert_eq!(a, render(tmp.path(), &Settings::default()));
}

#[test]
fn hostile_meta_cannot_escape_its_string() {
    let mut tags = BTreeMap::new();
    tags.insert("kraken:cluster".to_owned(), "c1".to_owned());
    tags.insert("kraken:roles".to_owned(), "nomad-client".to_owned());
    tags.insert(
        "kraken:meta:x".to_owned(),
        "\"}\nplugin \"raw_exec\" { config { enabled = true } } ${x} %{y} \\".to_owned(),
    );
    // Control characters are rejected by intent; the rest must be escaped.
    assert!(NodeSpec::from_tags(&tags, &Default::default()).is_err());
    tags.insert(
        "kraken:meta:x".to_owned(),
        "\"} plugin \"raw_exec\" { config { enabled = true } } ${x} %{y} \\".to_owned(),
    );
    let spec = NodeSpec::from_tags(&tags, &Default::default()).unwrap();
    let identity = Identity {
        instance_id: "i-1".into(),
        region: "r".into(),
        availability_zone: "a".into(),
        private_ipv4: "10.0.0.1".parse().unwrap(),
        tags,
        vpc_id: None,
        tags_source: Default::default(),
    };
    let files = Renderer::new(None)
        .unwrap()
        .render(
            &identity,
            &spec,
            &Peers::default(),
            &Settings::default(),
            &Default::default(),
        )
        .unwrap();
    let nomad = files
        .iter()
        .find(|f| f.file_name() == "nomad.hcl.hbs".trim_end_matches(".hbs"))
        .unwrap();
    let line = nomad
        .contents
        .lines()
        .find(|l| l.contains("\"x\" ="))
        .unwrap();
    assert_eq!(
        line.trim(),
        r#""x" = "\"} plugin \"raw_exec\" { config { enabled = true } } \u0024{x} \u0025{y} \\""#
    );
    assert!(!nomad.contents.contains("plugin \"raw_exec\" {\n"));
}
