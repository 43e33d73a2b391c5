//! The documents the instance serves, and IMDS's directory listings.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::config::{InstanceData, SpotAction};

fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Every leaf document under `/latest/`, by path. A key ending in `/` marks a
/// directory that exists even when empty (`tags/instance/` with no tags).
pub(crate) fn metadata(d: &InstanceData, started: SystemTime) -> BTreeMap<String, String> {
    let ip = d.private_ipv4;
    let [a, b, c, e] = ip.octets();
    let mac = (d.mac.clone()).unwrap_or_else(|| format!("0e:00:{a:02x}:{b:02x}:{c:02x}:{e:02x}"));
    let domain = match d.region.as_str() {
        "us-east-1" => "ec2.internal".to_owned(),
        region => format!("{region}.compute.internal"),
    };
    let hostname = format!("ip-{a}-{b}-{c}-{e}.{domain}");
    let mut m: BTreeMap<String, String> = [
        ("meta-data/ami-id", d.ami_id.clone()),
        ("meta-data/hostname", hostname.clone()),
        ("meta-data/instance-id", d.instance_id.clone()),
        ("meta-data/instance-type", d.instance_type.clone()),
        ("meta-data/local-hostname", hostname.clone()),
        ("meta-data/local-ipv4", ip.to_string()),
        ("meta-data/mac", mac.clone()),
        (
            "meta-data/placement/availability-zone",
            d.availability_zone.clone(),
        ),
        ("meta-data/placement/region", d.region.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    // The primary interface, as AWS lists it under its MAC address.
    let interface = format!("meta-data/network/interfaces/macs/{mac}");
    for (leaf, value) in [
        ("device-number", "0".to_owned()),
        ("interface-id", format!("eni-{a:02x}{b:02x}{c:02x}{e:02x}")),
        ("local-hostname", hostname.clone()),
        ("local-ipv4s", ip.to_string()),
        ("mac", mac.clone()),
        ("owner-id", d.account_id.clone()),
        ("subnet-id", d.subnet_id.clone()),
        ("vpc-id", d.vpc_id.clone()),
    ] {
        m.insert(format!("{interface}/{leaf}"), value);
    }
    if d.tags_in_metadata {
        m.insert("meta-data/tags/instance/".into(), String::new());
        for (key, value) in &d.tags {
            m.insert(format!("meta-data/tags/instance/{key}"), value.clone());
        }
    }
    if let Some(state) = d.target_lifecycle_state {
        let path = "meta-data/autoscaling/target-lifecycle-state";
        m.insert(path.into(), state.as_str().into());
    }
    if let Some(notice) = &d.spot_instance_action {
        // Spelled as AWS's documented example is, spaces included.
        let body = format!(
            r#"{{"action": "{}", "time": "{}"}}"#,
            notice.action.as_str(),
            notice.time
        );
        m.insert("meta-data/spot/instance-action".into(), body);
        // The older item, kept by AWS for compatibility: the time the
        // instance gets its shutdown signal, only when it is to be stopped
        // or terminated (a hibernation has no such time).
        if notice.action != SpotAction::Hibernate {
            m.insert(
                "meta-data/spot/termination-time".into(),
                notice.time.clone(),
            );
        }
    }
    if let Some(role) = &d.iam_role {
        let now = SystemTime::now();
        let info = json!({
            "Code": "Success",
            "LastUpdated": timestamp(now),
            "InstanceProfileArn": format!("arn:aws:iam::{}:instance-profile/{}", d.account_id, role.name),
            "InstanceProfileId": "AIPAFAKEIMDSINSTANCEPROFILE",
        });
        let credentials = json!({
            "Code": "Success",
            "LastUpdated": timestamp(now),
            "Type": "AWS-HMAC",
            "AccessKeyId": role.access_key_id,
            "SecretAccessKey": role.secret_access_key,
            "Token": role.token,
            "Expiration": timestamp(now + Duration::from_secs(6 * 3600)),
        });
        m.insert("meta-data/iam/info".into(), pretty(&info));
        let path = format!("meta-data/iam/security-credentials/{}", role.name);
        m.insert(path, pretty(&credentials));
    }
    let document = json!({
        "accountId": d.account_id,
        "architecture": d.architecture,
        "availabilityZone": d.availability_zone,
        "billingProducts": null,
        "devpayProductCodes": null,
        "marketplaceProductCodes": null,
        "imageId": d.ami_id,
        "instanceId": d.instance_id,
        "instanceType": d.instance_type,
        "kernelId": null,
        "pendingTime": timestamp(started),
        "privateIp": ip.to_string(),
        "ramdiskId": null,
        "region": d.region,
        "version": "2017-09-30",
    });
    m.insert(
        "dynamic/instance-identity/document".into(),
        pretty(&document),
    );
    m
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).expect("JSON values serialize")
}

/// A leaf's document, or a directory's listing: one entry a line, with a
/// trailing `/` on subdirectories, as IMDS lists them.
pub(crate) fn lookup(docs: &BTreeMap<String, String>, path: &str) -> Option<String> {
    let rel = path.strip_prefix("/latest/")?;
    if !rel.is_empty() && !rel.ends_with('/') {
        if let Some(doc) = docs.get(rel) {
            return Some(doc.clone());
        }
    }
    let dir = match rel.trim_end_matches('/') {
        "" => String::new(),
        d => format!("{d}/"),
    };
    let mut children = docs.keys().filter_map(|k| k.strip_prefix(&dir)).peekable();
    children.peek()?;
    let entries: BTreeSet<String> = children
        .filter(|rest| !rest.is_empty())
        .map(|rest| match rest.split_once('/') {
            Some((sub, _)) => format!("{sub}/"),
            None => rest.to_owned(),
        })
        .collect();
    Some(entries.into_iter().collect::<Vec<_>>().join("\n"))
}
