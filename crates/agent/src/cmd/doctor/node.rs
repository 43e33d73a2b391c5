//! Checks of the node's identity and its way to AWS: IMDS, tags, IAM,
//! clock, discovery.

use std::time::Duration;

use kraken_discovery::Ec2Peers;
use kraken_identity::{ImdsIdentity, TagsSource};
use kraken_secrets::{SecretStore, names};

use super::check::{Check, Context, DEADLINE, Level};
use crate::steps::{discovery as discovery_step, node};
use crate::tuning;

pub(super) async fn imds(ctx: &mut Context<'_>) -> Check {
    // Short limits: a person is waiting.
    let mut imds_settings = tuning::imds(ctx.settings);
    imds_settings.attempts = imds_settings.attempts.min(2);
    imds_settings.read_timeout = imds_settings.read_timeout.min(Duration::from_secs(2));
    let provider = ImdsIdentity::new(imds_settings, tuning::aws(ctx.settings));
    match tokio::time::timeout(DEADLINE, node::identity(&provider)).await {
        Ok(Ok(id)) => {
            let check = Check::ok(
                "imds",
                format!(
                    "{} {} in {} (tags from {})",
                    id.instance_id,
                    id.private_ipv4,
                    id.availability_zone,
                    match id.tags_source {
                        TagsSource::InstanceMetadata => "instance metadata",
                        TagsSource::DescribeInstances => "ec2:DescribeInstances",
                        TagsSource::NodeFile => "a node file",
                    }
                ),
            );
            ctx.identity = Some(id);
            check
        }
        Ok(Err(e)) => Check::bad(
            "imds",
            Level::Fail,
            e.to_string(),
            "IMDS disabled on the instance, IMDSv2 blocked, or (inside a container) a PUT response hop limit of 1",
            "curl -sX PUT http://169.254.169.254/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 60'; \
             aws ec2 describe-instances --instance-ids <id> --query 'Reservations[].Instances[].MetadataOptions'",
        ),
        Err(_) => Check::bad(
            "imds",
            Level::Fail,
            "no answer from the instance metadata service",
            "IMDS unreachable; in a container, the hop limit is the usual cause",
            "aws ec2 modify-instance-metadata-options --instance-id <id> --http-put-response-hop-limit 2",
        ),
    }
}

pub(super) fn tags(ctx: &mut Context<'_>) -> Check {
    let identity = ctx.identity();
    match node::intent(identity, ctx.settings) {
        Ok(spec) => {
            let roles: Vec<&str> = spec.roles.iter().map(|r| r.as_str()).collect();
            let check = Check::ok(
                "tags",
                format!("cluster {}, roles {}", spec.cluster, roles.join(",")),
            );
            ctx.spec = Some(spec);
            check
        }
        Err(e) => Check::bad(
            "tags",
            Level::Fail,
            e.to_string().replace('\n', " "),
            "an instance tag is missing or malformed (docs/tags.md)",
            format!(
                "aws ec2 describe-tags --filters Name=resource-id,Values={} ; fix with aws ec2 create-tags, then systemctl restart kraken-agent",
                identity.instance_id
            ),
        ),
    }
}

pub(super) async fn aws(ctx: &mut Context<'_>) -> Check {
    let aws = ctx.aws();
    // DryRun asks IAM without doing anything.
    let ec2_ok = match aws.ec2.describe_instances().dry_run(true).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            use aws_sdk_ec2::error::ProvideErrorMetadata;
            if e.code() == Some("DryRunOperation") {
                Ok(())
            } else {
                Err(kraken_aws::Failure::classify(&e).describe("ec2:DescribeInstances"))
            }
        }
    };
    let ssm_ok = match &aws.store {
        Ok(store) => store
            .get(names::GOSSIP_KEY)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match (ec2_ok, ssm_ok) {
        (Ok(()), Ok(())) => Check::ok(
            "aws",
            "credentials work; ec2:DescribeInstances and the secret store are allowed",
        ),
        (ec2, ssm) => {
            let problems: Vec<String> = [ec2.err(), ssm.err()].into_iter().flatten().collect();
            Check::bad(
                "aws",
                Level::Fail,
                problems.join("; "),
                "the instance role lacks a permission, or no credentials reach the agent",
                format!(
                    "aws sts get-caller-identity; compare the role of {} with docs/iam.md and docs/secrets.md",
                    ctx.identity().instance_id
                ),
            )
        }
    }
}

/// Skew against AWS's own clock (the `Date` of an API answer): AWS rejects
/// signed requests more than 5 minutes off, and Raft and TLS suffer long
/// before that.
pub(super) async fn clock(ctx: &mut Context<'_>) -> Check {
    let date = match ctx
        .aws()
        .ec2
        .describe_instances()
        .dry_run(true)
        .send()
        .await
    {
        Ok(_) => None,
        Err(e) => e
            .raw_response()
            .and_then(|r| r.headers().get("date"))
            .map(str::to_owned),
    };
    let kernel = kernel_clock_synchronised();
    let Some(date) = date.and_then(|d| httpdate_to_unix(&d)) else {
        return Check::skip("clock", "no dated answer from AWS to compare with");
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let skew = now - date as f64;
    let sync = if kernel {
        "synchronised"
    } else {
        "not synchronised"
    };
    let finding = format!("{skew:+.0}s from AWS's clock; kernel says {sync}");
    if skew.abs() >= 30.0 {
        Check::bad(
            "clock",
            Level::Fail,
            finding,
            "no time synchronisation",
            "chronyc tracking; timedatectl timesync-status",
        )
    } else if skew.abs() >= 3.0 {
        Check::bad(
            "clock",
            Level::Warn,
            finding,
            "time synchronisation drifting",
            "chronyc tracking",
        )
    } else {
        Check::ok("clock", finding)
    }
}

fn kernel_clock_synchronised() -> bool {
    // SAFETY: ntp_adjtime with modes = 0 only reads the kernel's state into
    // a zeroed struct we own.
    unsafe {
        let mut t: libc::timex = std::mem::zeroed();
        libc::ntp_adjtime(&mut t) != libc::TIME_ERROR
    }
}

/// Parses an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn httpdate_to_unix(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as i64
        + 1;
    let (day, year): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').filter_map(|p| p.parse().ok()).collect();
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + m * 60 + sec)
}

pub(super) async fn discovery(ctx: &mut Context<'_>) -> Check {
    let spec = ctx.spec();
    let aws = ctx.aws();
    let source =
        Ec2Peers::new(aws.ec2.clone(), aws.calls.clone()).in_vpc(ctx.identity().vpc_id.clone());
    match tokio::time::timeout(DEADLINE, discovery_step::discover(&source, spec)).await {
        Ok(Ok(peers)) => {
            let needed = discovery_step::needed(spec);
            let found = format!(
                "{} Consul servers, {} Nomad servers (expected {} and {})",
                peers.consul_servers.len(),
                peers.nomad_servers.len(),
                spec.consul_servers,
                spec.nomad_servers
            );
            let check = match peers.shortfall(needed) {
                None => Check::ok("discovery", found),
                Some(short) => Check::bad(
                    "discovery",
                    Level::Warn,
                    short,
                    "servers not running, or their kraken:cluster / kraken:roles tags differ",
                    format!(
                        "aws ec2 describe-instances --filters Name=tag:kraken:cluster,Values={} Name=instance-state-name,Values=running",
                        spec.cluster
                    ),
                ),
            };
            ctx.peers = Some(peers);
            check
        }
        Ok(Err(e)) => Check::bad(
            "discovery",
            Level::Fail,
            e.to_string(),
            "the EC2 API refused or failed the query",
            "see the aws check; docs/iam.md",
        ),
        Err(_) => Check::bad(
            "discovery",
            Level::Fail,
            "ec2:DescribeInstances did not answer",
            "no route to the EC2 endpoint, or it is throttling",
            "aws ec2 describe-instances --max-items 1",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::httpdate_to_unix;

    #[test]
    fn http_dates_parse_to_unix_time() {
        assert_eq!(
            httpdate_to_unix("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            httpdate_to_unix("Mon, 30 Nov 2026 15:14:17 GMT"),
            Some(1_796_051_657)
        );
        assert_eq!(httpdate_to_unix("Sun, 06 Nov 1994 08:49:37 PST"), None);
        assert_eq!(httpdate_to_unix("yesterday"), None);
    }
}
