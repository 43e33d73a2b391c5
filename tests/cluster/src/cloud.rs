//! moto as the cluster's EC2 and SSM: every VM is a real moto instance
//! (RunInstances with its tags and its address), and the cluster's secrets
//! are moto SSM parameters the harness reads as an operator would.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

use crate::host;

pub const REGION: &str = "us-east-1";
pub const AVAILABILITY_ZONE: &str = "us-east-1a";
/// moto accepts any key pair when it does not enforce IAM.
const OPERATOR_KEY: (&str, &str) = ("kraken-operator", "kraken-operator-secret");

/// Starts moto on `addr` (in the hub: the harness is there). Returns its PID.
pub fn start_moto(moto_server: &Path, host_ip: &str, port: u16, log: &Path) -> Result<u32> {
    host::spawn_daemon(moto_server, &["-H", host_ip, "-p", &port.to_string()], log)
}

pub struct Cloud {
    ec2: aws_sdk_ec2::Client,
    ssm: aws_sdk_ssm::Client,
    /// The autoscaling groups and hooks `cluster roll` plays.
    pub asg: aws_sdk_autoscaling::Client,
    /// The snapshots' bucket (`crate::restore`): addressed by path, since
    /// moto's endpoint is an address.
    pub s3: aws_sdk_s3::Client,
}

impl Cloud {
    /// Waits (up to a minute: moto imports a lot on a cold start) until
    /// moto answers at `endpoint`.
    pub async fn connect(endpoint: &str) -> Result<Cloud> {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(REGION))
            .endpoint_url(endpoint)
            .credentials_provider(aws_sdk_ec2::config::Credentials::new(
                OPERATOR_KEY.0,
                OPERATOR_KEY.1,
                None,
                None,
                "kraken-cluster",
            ))
            .load()
            .await;
        let cloud = Cloud {
            ec2: aws_sdk_ec2::Client::new(&sdk),
            ssm: aws_sdk_ssm::Client::new(&sdk),
            asg: aws_sdk_autoscaling::Client::new(&sdk),
            s3: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::config::Builder::from(&sdk)
                    .force_path_style(true)
                    .build(),
            ),
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            match cloud.ec2.describe_regions().send().await {
                Ok(_) => return Ok(cloud),
                Err(e) if tokio::time::Instant::now() > deadline => {
                    bail!(
                        "moto does not answer at {endpoint}: {}",
                        aws_sdk_ec2::error::DisplayErrorContext(e)
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
            }
        }
    }

    /// The VPC and subnet the instances are launched in: the hub's network.
    pub async fn subnet(&self) -> Result<String> {
        let found = self
            .ec2
            .describe_subnets()
            .filters(
                Filter::builder()
                    .name("cidr-block")
                    .values(host::SUBNET)
                    .build(),
            )
            .send()
            .await
            .context("ec2:DescribeSubnets")?;
        if let Some(id) = found.subnets().first().and_then(|s| s.subnet_id()) {
            return Ok(id.to_owned());
        }
        let vpc = self
            .ec2
            .create_vpc()
            .cidr_block(host::VPC_CIDR)
            .send()
            .await
            .context("ec2:CreateVpc")?;
        let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).context("no VPC id")?;
        let subnet = self
            .ec2
            .create_subnet()
            .vpc_id(vpc_id)
            .cidr_block(host::SUBNET)
            .availability_zone(AVAILABILITY_ZONE)
            .send()
            .await
            .context("ec2:CreateSubnet")?;
        Ok(subnet
            .subnet()
            .and_then(|s| s.subnet_id())
            .context("no subnet id")?
            .to_owned())
    }

    /// Launches one instance with these tags at this address; its id and
    /// VPC (which its IMDS reports, and the agent's discovery filters on).
    pub async fn run_instance(
        &self,
        subnet: &str,
        address: &str,
        tags: &BTreeMap<String, String>,
    ) -> Result<(String, String)> {
        let tags: Vec<Tag> = tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect();
        let out = self
            .ec2
            .run_instances()
            // moto's stock AMI id; the image itself is the local one.
            .image_id("ami-12c6146b")
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Medium)
            .min_count(1)
            .max_count(1)
            .subnet_id(subnet)
            .private_ip_address(address)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags))
                    .build(),
            )
            .send()
            .await
            .with_context(|| format!("ec2:RunInstances at {address}"))?;
        let instance = out
            .instances()
            .first()
            .context("RunInstances returned no instance")?;
        let id = instance.instance_id().context("an instance without id")?;
        let vpc = instance.vpc_id().context("an instance without VPC")?;
        Ok((id.to_owned(), vpc.to_owned()))
    }

    pub async fn terminate(&self, instance_id: &str) -> Result<()> {
        self.ec2
            .terminate_instances()
            .instance_ids(instance_id)
            .send()
            .await
            .with_context(|| format!("ec2:TerminateInstances {instance_id}"))?;
        Ok(())
    }

    /// Every secret of the cluster, by name below `/kraken/<cluster>/`
    /// (`consul/tokens/agent`, ...), decrypted.
    pub async fn secrets(&self, cluster: &str) -> Result<BTreeMap<String, String>> {
        let base = format!("/kraken/{cluster}/");
        let mut found = BTreeMap::new();
        let mut pages = self
            .ssm
            .get_parameters_by_path()
            .path(&base)
            .recursive(true)
            .with_decryption(true)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.context("ssm:GetParametersByPath")?;
            for p in page.parameters() {
                if let (Some(name), Some(value)) = (p.name(), p.value()) {
                    found.insert(
                        name.strip_prefix(&base).unwrap_or(name).to_owned(),
                        value.to_owned(),
                    );
                }
            }
        }
        Ok(found)
    }
}
