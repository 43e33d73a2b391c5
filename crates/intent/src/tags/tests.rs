use super::*;

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(pairs: &[(&str, &str)]) -> Result<NodeSpec, IntentError> {
    NodeSpec::from_tags(&tags(pairs), &IntentDefaults::default())
}

#[test]
fn a_client_with_class_and_meta() {
    let spec = parse(&[
        ("Name", "edge-1"),
        ("kraken:cluster", "kraken"),
        ("kraken:roles", "nomad-client"),
        ("kraken:node-class", "edge"),
        ("kraken:meta:team", "web \"quoted\" ${x}"),
        ("kraken:nomad-datacenter", "us-west-2a"),
    ])
    .unwrap();
    assert_eq!(spec.cluster, "kraken");
    assert_eq!(spec.roles, BTreeSet::from([Role::NomadClient]));
    assert_eq!(spec.node_class.as_deref(), Some("edge"));
    assert_eq!(spec.meta["team"], "web \"quoted\" ${x}");
    assert_eq!(spec.nomad_datacenter, "us-west-2a");
    assert_eq!(spec.datacenter, "dc1");
    assert_eq!((spec.consul_servers, spec.nomad_servers), (3, 3));
    assert!(spec.runs_nomad());
}

#[test]
fn several_roles_on_one_node() {
    let spec = parse(&[
        ("kraken:cluster", "c1"),
        ("kraken:roles", "consul-server, nomad-server,nomad-client"),
        ("kraken:consul-servers", "1"),
    ])
    .unwrap();
    assert_eq!(spec.roles.len(), 3);
    assert_eq!(spec.consul_servers, 1);
}

#[test]
fn every_problem_is_reported_with_tag_value_and_form() {
    let err = parse(&[
        ("kraken:roles", "consul-server,web"),
        ("kraken:consul-servers", "three"),
        ("kraken:node-clas", "edge"),
        ("kraken:nomad-region", "eu west"),
    ])
    .unwrap_err();
    let text = err.to_string();
    let tags: Vec<&str> = err.errors.iter().map(TagError::tag).collect();
    assert!(tags.contains(&"kraken:cluster"), "{text}");
    assert!(tags.contains(&"kraken:roles"), "{text}");
    assert!(tags.contains(&"kraken:consul-servers"), "{text}");
    assert!(tags.contains(&"kraken:node-clas"), "{text}");
    assert!(tags.contains(&"kraken:nomad-region"), "{text}");
    assert!(text.contains("\"consul-server,web\""), "{text}");
    assert!(text.contains("a whole number from 1 to 9"), "{text}");
    assert!(text.contains("tag kraken:cluster is missing"), "{text}");
}

#[test]
fn hostile_values_are_rejected_or_kept_verbatim_for_escaping() {
    for bad in ["Prod", "a", "-x", "x-", "has space", "a/b", "ümlaut"] {
        let err = parse(&[("kraken:cluster", bad), ("kraken:roles", "nomad-client")]).unwrap_err();
        assert_eq!(err.errors[0].tag(), "kraken:cluster", "{bad}");
    }
    let err = parse(&[
        ("kraken:cluster", "c1"),
        ("kraken:roles", "nomad-client"),
        ("kraken:meta:x", "line\nbreak"),
        ("kraken:node-class", "edge\"}\nserver{enabled=true"),
    ])
    .unwrap_err();
    assert_eq!(err.errors.len(), 2, "{err}");
    assert!(err.to_string().contains("\\n"), "{err}");
}

#[test]
fn duplicate_or_empty_roles_are_rejected() {
    for bad in ["", "nomad-client,nomad-client", ",", "NOMAD-CLIENT"] {
        let err = parse(&[("kraken:cluster", "c1"), ("kraken:roles", bad)]).unwrap_err();
        assert_eq!(err.errors[0].tag(), "kraken:roles", "{bad:?}");
    }
}

#[test]
fn client_only_tags_on_a_server_are_a_conflict() {
    let err = parse(&[
        ("kraken:cluster", "c1"),
        ("kraken:roles", "consul-server"),
        ("kraken:node-class", "edge"),
    ])
    .unwrap_err();
    assert!(matches!(err.errors[0], TagError::Conflict { .. }), "{err}");
}

#[test]
fn file_defaults_apply_when_tags_are_absent_and_tags_win() {
    let defaults = IntentDefaults {
        datacenter: "site-a".into(),
        consul_servers: 5,
        ..IntentDefaults::default()
    };
    let spec = NodeSpec::from_tags(
        &tags(&[
            ("kraken:cluster", "c1"),
            ("kraken:roles", "consul-server"),
            ("kraken:consul-servers", "3"),
        ]),
        &defaults,
    )
    .unwrap();
    assert_eq!(spec.datacenter, "site-a");
    assert_eq!(spec.consul_servers, 3);
}

#[test]
fn consul_datacenter_rule_and_reserved_meta() {
    let err = parse(&[
        ("kraken:cluster", "c1"),
        ("kraken:roles", "nomad-client"),
        ("kraken:datacenter", "us.west"),
        ("kraken:meta:kraken.cluster", "other"),
    ])
    .unwrap_err();
    let tags: Vec<&str> = err.errors.iter().map(TagError::tag).collect();
    assert_eq!(
        tags,
        ["kraken:meta:kraken.cluster", "kraken:datacenter"],
        "{err}"
    );
}

#[test]
fn count_bounds() {
    for bad in ["0", "10", " 3", "-1", "3.0"] {
        let err = parse(&[
            ("kraken:cluster", "c1"),
            ("kraken:roles", "consul-server"),
            ("kraken:consul-servers", bad),
        ])
        .unwrap_err();
        assert_eq!(err.errors[0].tag(), "kraken:consul-servers", "{bad}");
    }
}
