//! `cluster warm add GROUP` and `cluster warm start NODE`: the group's warm
//! pool. `add` launches an instance whose IMDS says `Warmed:Running` from
//! its first moment: its agent prepares, completes the launching hook and
//! must join nothing. A client must also have pulled the image its
//! `lifecycle.warm_images` names from a registry on the hub
//! ([`crate::registry`]). `start` puts it in service as the group would (a
//! launching hook, then `InService`) and times the agent's answer: from the
//! state change to the node eligible in Nomad. The web service is requested
//! through Consul the whole time.

use std::time::{Duration, Instant};

use anyhow::Result;
use kraken_testkit::asg::EndedBy;
use serde_json::Value;

use crate::api::nomad_url;
use crate::cluster::Cluster;
use crate::lifecycle::{self, LAUNCHING, Report};
use crate::registry::Registry;
use crate::traffic::Traffic;

const WARM: &str = "Warmed:Running";

/// `cluster warm add GROUP`.
pub async fn add(cluster: &mut Cluster, group: &str) -> Result<Report> {
    let started = Instant::now();
    let fake = lifecycle::autoscaling(cluster).await?;
    let mut report = lifecycle::new_report(format!("warm add {group}"));
    let tokens = cluster.tokens().await?;
    report.voters_before = crate::voters::voters(cluster, &tokens).await;
    let traffic = Traffic::start(cluster, tokens.clone(), 2);
    let pulls = cluster.group(group)?.is_nomad_client();
    let registry = match pulls {
        true => Some(
            Registry::start(
                &cluster.paths.registry_bin,
                &cluster.paths.root.join("registry"),
            )
            .await?,
        ),
        false => None,
    };
    let mut user_data = cluster.user_data.clone();
    if let Some(registry) = &registry {
        user_data.agent_toml = with_warm_image(&user_data.agent_toml, &registry.image)?;
        user_data.extra_ca = Some(match user_data.extra_ca.take() {
            Some(ca) => format!("{ca}{}", registry.ca_pem),
            None => registry.ca_pem.clone(),
        });
    }
    let vm = cluster
        .launch_as(group, Some(&user_data), Some(WARM))
        .await?;
    let (name, id) = (vm.name.clone(), vm.instance_id.clone());
    // Into the pool, the launching hook runs as for any launch.
    fake.begin(&lifecycle::asg_name(group), LAUNCHING, &id)
        .await?;
    cluster.log(format!("{name} launched into the warm pool ({WARM})"));
    let outcome = fake.wait_outcome(&id, Duration::from_secs(600)).await;
    if !outcome.as_ref().is_some_and(|o| o.by == EndedBy::Completed) {
        report.failures.push(format!(
            "{name}: the launching hook into the pool was not completed by its agent"
        ));
    }
    report
        .hooks
        .push(lifecycle::hook_report(&name, outcome, LAUNCHING));
    // A moment for anything that should not happen to happen.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let vm = cluster.vm(&name)?;
    for unit in ["consul.service", "nomad.service"] {
        let state = vm
            .exec(&["systemctl", "is-active", unit])
            .unwrap_or_else(|e| e.to_string());
        if state.trim() == "active" {
            report
                .failures
                .push(format!("{name}: {unit} runs in the warm pool"));
        }
    }
    if known_to_cluster(cluster, &tokens, &id).await {
        report.failures.push(format!(
            "{name}: the cluster knows the warm instance {id} (Consul member or Nomad node)"
        ));
    }
    match vm.agent_status() {
        Some(s) => {
            if let Some(registry) = &registry {
                check_pulled(vm, registry, s.steps.get("warm"), &mut report);
            }
            report.left.push(serde_json::json!({ name.clone(): {
                "phase": s.phase, "warm": s.steps.get("warm") } }))
        }
        None => report.failures.push(format!("{name}: no agent status")),
    }
    lifecycle::add_traffic(&mut report, traffic.finish().await);
    lifecycle::finish(cluster, &mut report, started).await?;
    fake.shutdown().await;
    Ok(report)
}

/// `agent_toml` with `lifecycle.warm_images = [image]`.
fn with_warm_image(agent_toml: &str, image: &str) -> Result<String> {
    if agent_toml.contains("[lifecycle]") || agent_toml.contains("warm_images") {
        anyhow::bail!(
            "the cluster's agent.toml already has a [lifecycle] table: \
             update tests/cluster/src/warm.rs"
        );
    }
    Ok(format!(
        "{agent_toml}\n# The warm pool's image (cluster warm add).\n\
         [lifecycle]\nwarm_images = [\"{image}\"]\n"
    ))
}

/// The warm node pulled the registry's image: its agent says so, its
/// Docker holds it, and the registry served it.
fn check_pulled(
    vm: &crate::vm::Vm,
    registry: &Registry,
    warm: Option<&Value>,
    report: &mut Report,
) {
    let name = &vm.name;
    let pulled = warm
        .and_then(|w| w["pulled"].as_array().cloned())
        .unwrap_or_default();
    let ok = pulled
        .iter()
        .any(|p| p["image"] == registry.image.as_str() && p["error"].is_null());
    if !ok {
        report.failures.push(format!(
            "{name}: its agent did not pull {} in the warm pool: {pulled:?}",
            registry.image
        ));
    }
    if let Err(e) = vm.exec(&[
        "docker",
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        &registry.image,
    ]) {
        report.failures.push(format!(
            "{name}: its Docker does not hold {}: {e:#}",
            registry.image
        ));
    }
    // The config and the one layer.
    let served = registry.blobs_served();
    if served < 2 {
        report.failures.push(format!(
            "{name}: the registry served {served} blobs of {}, not the 2 a pull reads",
            registry.image
        ));
    }
}

/// `cluster warm start NODE`.
pub async fn start(cluster: &mut Cluster, name: &str) -> Result<Report> {
    let started = Instant::now();
    let fake = lifecycle::autoscaling(cluster).await?;
    let mut report = lifecycle::new_report(format!("warm start {name}"));
    let tokens = cluster.tokens().await?;
    report.voters_before = crate::voters::voters(cluster, &tokens).await;
    let traffic = Traffic::start(cluster, tokens.clone(), 2);
    let vm = cluster.vm(name)?;
    let (group, id) = (vm.group.clone(), vm.instance_id.clone());
    fake.begin(&lifecycle::asg_name(&group), LAUNCHING, &id)
        .await?;
    let in_service = Instant::now();
    cluster
        .vm_mut(name)?
        .set_imds("target_lifecycle_state", Value::from("InService"))?;
    cluster.log(format!("{name}: put in service"));
    let eligible = wait_eligible(cluster, &tokens, &id, Duration::from_secs(120)).await;
    let to_eligible = in_service.elapsed().as_secs_f64();
    match eligible {
        true => cluster.log(format!(
            "{name}: Nomad node eligible {to_eligible:.1}s after InService"
        )),
        false => report.failures.push(format!(
            "{name}: its Nomad node is not eligible after 120 s"
        )),
    }
    let outcome = fake.wait_outcome(&id, Duration::from_secs(600)).await;
    if !outcome.as_ref().is_some_and(|o| o.by == EndedBy::Completed) {
        report.failures.push(format!(
            "{name}: the launching hook into service was not completed by its agent"
        ));
    }
    report
        .hooks
        .push(lifecycle::hook_report(name, outcome, LAUNCHING));
    report.left.push(serde_json::json!({ name: {
        "in_service_to_eligible_s": eligible.then_some(to_eligible),
        "warm": cluster.vm(name)?.agent_status().and_then(|s| s.steps.get("warm").cloned()),
    } }));
    lifecycle::add_traffic(&mut report, traffic.finish().await);
    lifecycle::finish(cluster, &mut report, started).await?;
    fake.shutdown().await;
    Ok(report)
}

/// Whether a Consul server lists `id` as a member or Nomad as a node.
async fn known_to_cluster(cluster: &Cluster, tokens: &crate::api::Tokens, id: &str) -> bool {
    lifecycle::consul_member_status(cluster, tokens, id)
        .await
        .is_some()
        || nomad_node(cluster, tokens, id).await.is_some()
}

/// The node named `id` in Nomad's node list.
pub(crate) async fn nomad_node(
    cluster: &Cluster,
    tokens: &crate::api::Tokens,
    id: &str,
) -> Option<Value> {
    for node in cluster.nodes().iter().filter(|n| n.group.is_nomad_server()) {
        let url = nomad_url(&node.vm.address, "/v1/nodes");
        if let Ok((200, nodes)) = cluster.api.get(&url, tokens.nomad_header()).await {
            return nodes
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["Name"] == id)
                .cloned();
        }
    }
    None
}

async fn wait_eligible(
    cluster: &Cluster,
    tokens: &crate::api::Tokens,
    id: &str,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(n) = nomad_node(cluster, tokens, id).await
            && n["Status"] == "ready"
            && n["SchedulingEligibility"] == "eligible"
        {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}
