//! Every config the agent renders, for every example role and role
//! combination and with the optional blocks on and off, passes the real
//! `consul validate` and `nomad config validate`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;
use kraken_testkit::{TestDir, consul_bin, nomad_bin};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples");
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml" || e == "json"))
        .collect();
    v.sort();
    v
}

const VARIANTS: &[(&str, &str)] = &[
    ("defaults", ""),
    (
        "optional-blocks",
        "[nomad]\nraw_exec = true\nnetwork_interface = \"eth0\"\n\n[docker]\nlog_driver = \"journald\"\ndata_root = \"/var/lib/docker-data\"\n\n[intent]\nnode_class = \"generic\"\n",
    ),
    (
        "site-paths",
        "[paths]\nconsul_data_dir = \"/data/consul dir\"\nnomad_data_dir = \"/data/nomad\"\n\n[consul]\nclient_addr = \"0.0.0.0\"\n",
    ),
    (
        "cloud-auto-join",
        "[discovery]\nconsul_auto_join = \"provider=aws region=us-east-1 tag_key=kraken:roles tag_value=consul-server,nomad-server endpoint=http://10.213.0.1:5000\"\nnomad_auto_join = \"provider=aws tag_key=kraken:roles tag_value=nomad-server\"\n[docker]\nenabled = false\n",
    ),
];

fn validate(dir: &Path, what: &str) -> usize {
    let mut checked = 0;
    let consul = dir.join("consul.hcl");
    let out = Command::new(consul_bin())
        .args(["validate", "-quiet"])
        .arg(&consul)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "consul validate {what}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(&consul).unwrap()
    );
    checked += 1;
    let nomad = dir.join("nomad.hcl");
    if nomad.exists() {
        let out = Command::new(nomad_bin())
            .args(["config", "validate"])
            .arg(&nomad)
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "nomad config validate {what}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&nomad).unwrap()
        );
        checked += 1;
    }
    let docker = dir.join("docker-daemon.json");
    if docker.exists() {
        let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&docker).unwrap())
            .unwrap_or_else(|e| panic!("daemon.json of {what}: {e}"));
        assert_eq!(v["live-restore"], true, "{what}");
        assert!(v["log-opts"].is_object(), "{what}");
        checked += 1;
    }
    checked
}

fn render(node: &Path, settings: &str, dir: &Path) -> PathBuf {
    let out = dir.join("out");
    let result = agent(
        &AwsEnv::default(),
        settings,
        &[
            "render",
            "--node",
            node.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
        dir,
    );
    assert!(result.status.success(), "{}", text(&result));
    out
}

#[test]
fn every_example_and_variant_passes_the_real_validators() {
    let mut checked = 0;
    let examples = examples();
    assert!(examples.len() >= 6);
    for example in &examples {
        for (variant, settings) in VARIANTS {
            let dir = TestDir::new("validate");
            let what = format!("{} / {variant}", example.display());
            let out = render(example, settings, dir.path());
            checked += validate(&out, &what);
        }
    }
    assert!(checked >= 40, "only {checked} files validated");
}

#[test]
fn hostile_tag_values_still_validate_and_keep_their_value() {
    let dir = TestDir::new("hostile");
    let hostile = r#""} plugin "raw_exec" { config { enabled = true } } ${x} %{y} \"#;
    let node = serde_json::json!({
        "identity": {
            "instance_id": "i-0000000000000bad",
            "region": "us-west-2",
            "availability_zone": "us-west-2a",
            "private_ipv4": "10.0.0.9",
            "tags": {
                "kraken:cluster": "c1",
                "kraken:roles": "nomad-client",
                "kraken:meta:note": hostile,
            },
        },
        "peers": { "consul_servers": ["10.0.0.1"], "nomad_servers": ["10.0.0.1"] },
    });
    let path = dir.path().join("node.json");
    std::fs::write(&path, node.to_string()).unwrap();
    let out = render(&path, "", dir.path());
    validate(&out, "hostile meta");
    let nomad = std::fs::read_to_string(out.join("nomad.hcl")).unwrap();
    assert!(!nomad.contains("plugin \"raw_exec\" {\n"), "{nomad}");
}

/// The golden files include a node rendered with every secret present (as
/// `run` renders it): those pass the validators too.
#[test]
fn golden_files_pass_the_real_validators() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../render/tests/golden");
    let mut checked = 0;
    for dir in std::fs::read_dir(&golden).unwrap() {
        let dir = dir.unwrap().path();
        let tmp = TestDir::new("golden");
        // The validators read the file names the agent installs.
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().path();
            std::fs::copy(&file, tmp.path().join(file.file_name().unwrap())).unwrap();
        }
        checked += validate(tmp.path(), &dir.display().to_string());
    }
    assert!(checked >= 15, "only {checked} files validated");
}
