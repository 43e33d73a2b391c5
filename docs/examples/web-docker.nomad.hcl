# The seed cluster's web service on AWS, with the Docker driver: the same
# job as jobs/web.nomad.hcl (two instances on two generic clients, Consul
# service "web" with an HTTP check), the binary shipped in an image.
#
#   nomad job run -var image=ACCOUNT.dkr.ecr.REGION.amazonaws.com/kraken-web:0.1.0 \
#     docs/examples/web-docker.nomad.hcl
#
# The image needs only the kraken-web binary as its entrypoint.

variable "datacenters" {
  description = "Datacenters the job may run in."
  type        = list(string)
  default     = ["*"]
}

variable "image" {
  description = "Docker image whose entrypoint is kraken-web."
  type        = string
}

job "web" {
  type        = "service"
  datacenters = var.datacenters

  group "web" {
    count = 2

    constraint {
      attribute = "${node.class}"
      value     = "generic"
    }

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      port "http" {}
    }

    task "web" {
      driver = "docker"

      config {
        image = var.image
        # kraken-web listens on NOMAD_IP_http:NOMAD_PORT_http, the node's
        # address and the port registered in Consul. In Docker's default
        # bridge network that address does not exist inside the container;
        # on the host's network it does, and no port mapping is needed.
        network_mode = "host"
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

      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
