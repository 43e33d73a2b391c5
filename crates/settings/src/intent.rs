use serde::{Deserialize, Serialize};

use crate::names::{NAME_FORM, valid_datacenter, valid_name};

/// Defaults for intent tags an instance does not carry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntentDefaults {
    pub datacenter: String,
    pub nomad_datacenter: String,
    pub nomad_region: String,
    pub consul_servers: u8,
    pub nomad_servers: u8,
    pub node_class: Option<String>,
}

impl Default for IntentDefaults {
    fn default() -> Self {
        IntentDefaults {
            datacenter: "dc1".into(),
            nomad_datacenter: "dc1".into(),
            nomad_region: "global".into(),
            consul_servers: 3,
            nomad_servers: 3,
            node_class: None,
        }
    }
}

impl IntentDefaults {
    /// The tags' own rules, so that a default is never a value its tag
    /// would reject.
    pub(crate) fn validate(&self) -> Result<(), String> {
        for (key, n) in [
            ("intent.consul_servers", self.consul_servers),
            ("intent.nomad_servers", self.nomad_servers),
        ] {
            if !(1..=9).contains(&n) {
                return Err(format!("{key} = {n}; expected a whole number from 1 to 9"));
            }
        }
        for (key, v) in [
            ("intent.nomad_datacenter", &self.nomad_datacenter),
            ("intent.nomad_region", &self.nomad_region),
        ]
        .into_iter()
        .chain(self.node_class.as_ref().map(|c| ("intent.node_class", c)))
        {
            if !valid_name(v) {
                return Err(format!("{key} = {v:?}; expected {NAME_FORM}"));
            }
        }
        if !valid_datacenter(&self.datacenter) {
            return Err(format!(
                "intent.datacenter = {:?}; expected 1-64 characters of a-z, 0-9, '-' and '_'",
                self.datacenter
            ));
        }
        Ok(())
    }
}
