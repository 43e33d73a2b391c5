# The kraken AMI: Debian 12 with Consul, Nomad, Docker CE, kraken-agent and
# its systemd units. kraken-agent.service is enabled; at boot it reads the
# instance's tags and configures the node. See docs/image.md.
#
#   packer init packer/
#   packer build -var region=eu-west-1 \
#     -var agent_binary=target/release/kraken-agent packer/
#
# The provisioning scripts (packer/scripts/*.sh) are the same ones that
# packer/build-local-image.sh runs in a chroot for the local test image;
# KRAKEN_PEERS_SOURCE=apt is the only difference.

packer {
  required_version = ">= 1.10.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "region" {
  type        = string
  description = "AWS region to build in (the AMI is registered there)."
  default     = "us-east-1"
}

variable "source_ami" {
  type        = string
  description = "Base AMI ID. Empty: the newest Debian 12 amd64 AMI published by Debian (owner 136693071363)."
  default     = ""
}

variable "instance_type" {
  type        = string
  description = "Instance type of the build instance."
  default     = "t3.small"
}

variable "consul_version" {
  type        = string
  description = "Consul version from HashiCorp's apt repository (package consul=<version>-1)."
  default     = "1.22.5"
}

variable "nomad_version" {
  type        = string
  description = "Nomad version from HashiCorp's apt repository (package nomad=<version>-1)."
  default     = "1.11.1"
}

variable "docker_version" {
  type        = string
  description = "Optional apt version of docker-ce/docker-ce-cli (e.g. 5:27.5.1-1~debian.12~bookworm). Empty: the newest."
  default     = ""
}

variable "agent_binary" {
  type        = string
  description = "Path to a release build of kraken-agent for x86_64 Linux (cargo build --release -p kraken-agent). Empty: target/release/kraken-agent in this repository."
  default     = ""
}

variable "agent_toml" {
  type        = string
  description = "Optional path to an agent.toml to bake as /etc/kraken/agent.toml. Empty: none (the agent's defaults; cloud-init may write one)."
  default     = ""
}

variable "ami_name_prefix" {
  type        = string
  description = "The AMI is named <prefix>-<UTC timestamp>."
  default     = "kraken"
}

variable "root_volume_size_gb" {
  type        = number
  description = "Size of the AMI's root volume (gp3). Launch templates may ask for more."
  default     = 8
}

variable "subnet_id" {
  type        = string
  description = "Subnet for the build instance. Empty: the default VPC's."
  default     = ""
}

variable "extra_environment" {
  type        = list(string)
  description = "More NAME=value variables for the provisioning scripts, e.g. HASHICORP_APT_URL / DOCKER_APT_URL and their *_GPG_FINGERPRINT for a mirror, or KRAKEN_DOCKER_ENABLE=1."
  default     = []
}

variable "ami_regions" {
  type        = list(string)
  description = "Other regions to copy the AMI to."
  default     = []
}

variable "ami_users" {
  type        = list(string)
  description = "AWS account IDs allowed to launch the AMI."
  default     = []
}

locals {
  timestamp = regex_replace(timestamp(), "[- TZ:]", "")
  # Absolute: fileset() resolves a relative path against this directory,
  # the provisioners against the working directory.
  root         = abspath(path.root)
  agent_binary = var.agent_binary != "" ? var.agent_binary : "${local.root}/../target/release/kraken-agent"
  scripts      = [for f in sort(fileset("${local.root}/scripts", "[0-9][0-9]-*.sh")) : "${local.root}/scripts/${f}"]
  # Debian's official AMIs: https://wiki.debian.org/Cloud/AmazonEC2Image
  debian_owner = "136693071363"
}

source "amazon-ebs" "kraken" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id != "" ? var.subnet_id : null

  source_ami = var.source_ami != "" ? var.source_ami : null
  dynamic "source_ami_filter" {
    for_each = var.source_ami == "" ? [1] : []
    content {
      filters = {
        name                = "debian-12-amd64-*"
        architecture        = "x86_64"
        virtualization-type = "hvm"
        root-device-type    = "ebs"
      }
      owners      = [local.debian_owner]
      most_recent = true
    }
  }

  ssh_username = "admin"

  # The build instance: IMDSv2 only, as on the cluster's instances.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled"
  }
  # Instances launched from the AMI require IMDSv2 by default, even without
  # a launch template that says so (AWS then defaults their hop limit to 2;
  # launch templates should set 1, see docs/image.md). The agent only ever
  # uses IMDSv2.
  imds_support = "v2.0"

  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = var.root_volume_size_gb
    volume_type           = "gp3"
    delete_on_termination = true
  }

  ami_name        = "${var.ami_name_prefix}-${local.timestamp}"
  ami_description = "kraken-agent node: Debian 12, Consul ${var.consul_version}, Nomad ${var.nomad_version}, Docker CE"
  ami_regions     = var.ami_regions
  ami_users       = var.ami_users
  ena_support     = true
  sriov_support   = true

  tags = {
    Name          = "${var.ami_name_prefix}-${local.timestamp}"
    Project       = "kraken"
    ConsulVersion = var.consul_version
    NomadVersion  = var.nomad_version
    BaseAMI       = "{{ .SourceAMI }}"
    BaseAMIName   = "{{ .SourceAMIName }}"
  }
  # Not kraken:* tags: the build instance runs no agent, and must never be
  # mistaken for a cluster member by discovery.
  run_tags = {
    Name    = "${var.ami_name_prefix}-packer-build"
    Project = "kraken"
  }
}

build {
  name    = "kraken"
  sources = ["source.amazon-ebs.kraken"]

  # Staging directory for the uploads (removed by 90-cleanup.sh).
  provisioner "shell" {
    inline = ["mkdir -p /tmp/kraken/units"]
  }

  provisioner "file" {
    source      = local.agent_binary
    destination = "/tmp/kraken/kraken-agent"
  }

  # The trailing slash uploads the directory's contents.
  provisioner "file" {
    source      = "${local.root}/../systemd/"
    destination = "/tmp/kraken/units"
  }

  # Always uploaded (the file provisioner needs content); installed only
  # when KRAKEN_AGENT_TOML below names it.
  provisioner "file" {
    content     = var.agent_toml != "" ? file(var.agent_toml) : "# no agent.toml baked\n"
    destination = "/tmp/kraken/agent.toml"
  }

  # 10-users-and-dirs, 20-hashicorp, 30-docker, 40-agent, 90-cleanup: every
  # numbered script, in order (build-local-image.sh runs the same list).
  provisioner "shell" {
    scripts         = local.scripts
    execute_command = "chmod +x '{{ .Path }}'; sudo env {{ .Vars }} bash '{{ .Path }}'"
    environment_vars = concat([
      "DEBIAN_FRONTEND=noninteractive",
      "KRAKEN_PEERS_SOURCE=apt",
      "CONSUL_VERSION=${var.consul_version}",
      "NOMAD_VERSION=${var.nomad_version}",
      "DOCKER_VERSION=${var.docker_version}",
      "KRAKEN_AGENT_BIN=/tmp/kraken/kraken-agent",
      "KRAKEN_UNITS_DIR=/tmp/kraken/units",
      "KRAKEN_AGENT_TOML=${var.agent_toml != "" ? "/tmp/kraken/agent.toml" : ""}",
    ], var.extra_environment)
  }
}
