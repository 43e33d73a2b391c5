# The seed cluster's web service (services/web, `kraken-web`) in the local
# cluster: two instances on two different generic clients, registered in
# Consul as "web" with an HTTP health check. Each answers `GET /` with its
# own allocation id.
#
#   nomad job run -var web_binary=/path/to/kraken-web jobs/web.nomad.hcl
#
# No Consul token here nor at submission: the service registers in Consul
# with its own workload identity (docs/workload-identity.md). The local VM
# cluster submits it in team web's namespace web-prod with that team's
# token (docs/teams.md), not the management token:
#
#   NOMAD_TOKEN=<teams/web/prod/nomad-token> nomad job run -namespace web-prod ...
#
# raw_exec runs the binary the image installs (packer/), so the job needs
# no image registry. The AWS variant, with Docker, is
# docs/examples/web-docker.nomad.hcl.

variable "datacenters" {
  description = "Datacenters the job may run in."
  type        = list(string)
  default     = ["*"]
}

variable "web_binary" {
  description = "Absolute path of the kraken-web binary on the clients."
  type        = string
  default     = "/opt/kraken/bin/kraken-web"
}

job "web" {
  type        = "service"
  datacenters = var.datacenters

  group "web" {
    count = 2

    # The seed's clients are of class generic or edge; edge is kept for
    # ingress, the service runs on generic.
    constraint {
      attribute = "${node.class}"
      value     = "generic"
    }

    # One instance per node: losing a node takes one instance, not both.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      # Dynamic: Nomad picks the port and hands it to the task as
      # NOMAD_IP_http/NOMAD_PORT_http, which kraken-web listens on.
      port "http" {}
    }

    task "web" {
      driver = "raw_exec"

      # Never root: the clients refuse raw_exec tasks as uid or gid 0, so
      # that the node's tokens and keys stay out of a task's reach
      # (docs/iam.md). kraken-web needs no privilege.
      user = "nobody"

      # Out of Consul first, then stopped: a drain (a client leaving) or a
      # deployment never sends a user to an instance that is going away.
      shutdown_delay = "5s"

      config {
        command = var.web_binary
      }

      service {
        provider = "consul"
        name     = "web"
        port     = "http"

        check {
          type     = "http"
          path     = "/health"
          interval = "5s"
          timeout  = "2s"
        }
      }

      # A status endpoint: a few MB of memory, next to no CPU.
      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
