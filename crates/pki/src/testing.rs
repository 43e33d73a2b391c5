//! What the unit tests of every module share.

use std::time::Duration;

use crate::names::ClusterNames;

pub(crate) fn names() -> ClusterNames {
    ClusterNames {
        cluster: "c1".into(),
        consul_datacenter: "dc1".into(),
        consul_domain: "consul".into(),
        nomad_region: "global".into(),
    }
}

pub(crate) const YEAR: Duration = Duration::from_secs(365 * 86_400);
