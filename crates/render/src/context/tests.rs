use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::*;

/// What a person overriding a template reads.
const DOCS: &str = include_str!("../../../../docs/templates.md");

/// The variables in the tables under "## Context", each with its documented
/// type.
fn documented() -> BTreeMap<String, String> {
    let section = DOCS
        .split("\n## Context\n")
        .nth(1)
        .expect("docs/templates.md has a \"## Context\" section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut vars = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, names, ty, ..] = cells[..] else {
            panic!("docs/templates.md: a table row without a type column: {line}");
        };
        for name in names.split(',') {
            let name = name.trim().trim_matches('`');
            let earlier = vars.insert(name.to_owned(), ty.to_owned());
            assert!(earlier.is_none(), "docs/templates.md lists {name} twice");
        }
    }
    assert!(vars.len() > 40, "the tables were not found: {vars:?}");
    vars
}

/// The serialised context by dotted path, down to values a template
/// writes: strings, numbers, booleans, null, lists, and the maps the docs
/// call maps (their keys are the node's, not ours).
fn leaves(ctx: &Context, docs: &BTreeMap<String, String>) -> BTreeMap<String, Value> {
    fn walk(
        v: &Value,
        path: &str,
        docs: &BTreeMap<String, String>,
        out: &mut BTreeMap<String, Value>,
    ) {
        let is_map = docs.get(path).is_some_and(|t| t.starts_with("map"));
        match v {
            Value::Object(fields) if !is_map => {
                for (key, v) in fields {
                    let path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    walk(v, &path, docs, out);
                }
            }
            _ => {
                out.insert(path.to_owned(), v.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(&serde_json::to_value(ctx).unwrap(), "", docs, &mut out);
    out
}

fn fits(ty: &str, v: &Value) -> bool {
    match ty {
        "string" => v.is_string(),
        "string or null" => v.is_string() || v.is_null(),
        "bool" => v.is_boolean(),
        "number" => v.is_u64(),
        "list of strings" => v.as_array().is_some_and(|a| a.iter().all(Value::is_string)),
        "map of strings" => v
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string)),
        other => panic!(
            "docs/templates.md: type {other:?} is not one this test knows \
             (string, string or null, bool, number, list of strings, map of strings)"
        ),
    }
}

fn context(tags: &[(&str, &str)], settings: &Settings, secrets: &RenderSecrets) -> Context {
    let tags: BTreeMap<String, String> = tags
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let identity: Identity = serde_json::from_value(json!({
        "instance_id": "i-0000000000000001",
        "region": "eu-central-1",
        "availability_zone": "eu-central-1a",
        "private_ipv4": "10.9.0.5",
        "tags": tags,
    }))
    .unwrap();
    let spec = NodeSpec::from_tags(&identity.tags, &settings.intent).unwrap();
    let peers = Peers {
        consul_servers: BTreeSet::from([Ipv4Addr::new(10, 9, 0, 5)]),
        nomad_servers: BTreeSet::from([Ipv4Addr::new(10, 9, 0, 5)]),
    };
    Context::new(&identity, &spec, &peers, settings, secrets)
}

/// A Consul server with nothing optional set: every optional value null.
fn bare() -> Context {
    context(
        &[("kraken:cluster", "c1"), ("kraken:roles", "consul-server")],
        &Settings::default(),
        &RenderSecrets::default(),
    )
}

/// Every role, every optional value and every secret set.
fn full() -> Context {
    let settings = Settings::parse(
        "[nomad]\nnetwork_interface = \"ens5\"\n[docker]\ndata_root = \"/srv/docker\"\n",
    )
    .unwrap();
    let secret = |s: &str| Some(Secret::new(s));
    context(
        &[
            ("kraken:cluster", "c1"),
            ("kraken:roles", "consul-server,nomad-server,nomad-client"),
            ("kraken:node-class", "edge"),
            ("kraken:meta:team", "web"),
        ],
        &settings,
        &RenderSecrets {
            gossip_key: secret("gossip-value"),
            initial_management: secret("management-value"),
            consul_agent: secret("agent-value"),
            nomad_consul: secret("nomad-consul-value"),
            nomad_gossip_key: secret("nomad-gossip-value"),
        },
    )
}

#[test]
fn the_documented_variables_are_the_context() {
    let docs = documented();
    for (name, ctx) in [("bare", bare()), ("full", full())] {
        let vars = leaves(&ctx, &docs);
        let in_code: BTreeSet<&String> = vars.keys().collect();
        let in_docs: BTreeSet<&String> = docs.keys().collect();
        assert_eq!(
            in_code.difference(&in_docs).collect::<Vec<_>>(),
            Vec::<&&String>::new(),
            "in the context but not in docs/templates.md"
        );
        assert_eq!(
            in_docs.difference(&in_code).collect::<Vec<_>>(),
            Vec::<&&String>::new(),
            "in docs/templates.md but not in the context"
        );
        for (var, value) in &vars {
            let ty = &docs[var];
            assert!(
                fits(ty, value),
                "{name}: {var} is documented as {ty} but is {value}"
            );
            // The bare node leaves every optional value unset, so null
            // there is exactly what "or null" has to promise.
            if name == "bare" {
                assert_eq!(
                    value.is_null(),
                    ty.ends_with("or null"),
                    "{var}: documented as {ty}, on a bare node {value}"
                );
            }
        }
    }
}

#[test]
fn secrets_reach_the_template_and_never_debug_output() {
    let ctx = full();
    let debug = format!("{ctx:?}");
    let serialised = serde_json::to_string(&ctx).unwrap();
    for value in [
        "gossip-value",
        "management-value",
        "agent-value",
        "nomad-consul-value",
        "nomad-gossip-value",
    ] {
        assert!(!debug.contains(value), "{value} in {debug}");
        assert!(
            serialised.contains(value),
            "{value} missing from {serialised}"
        );
    }
    assert!(debug.contains("<redacted>"), "{debug}");
}
