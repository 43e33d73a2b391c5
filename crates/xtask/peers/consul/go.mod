// Wrapper module that builds the consul binary from its published Go module.
// Consul's own go.mod replaces its submodules with local paths (./api, ...),
// which `go install module@version` refuses; here they are required at the
// versions Consul v1.22.5's go.mod lists, and its exclude block is copied.
module kraken.local/peers/consul

go 1.25.7

require (
	github.com/hashicorp/consul v1.22.5
	github.com/hashicorp/consul/api v1.33.2
	github.com/hashicorp/consul/envoyextensions v0.9.2
	github.com/hashicorp/consul/proto-public v0.7.1
	github.com/hashicorp/consul/sdk v0.17.1
	github.com/hashicorp/consul/troubleshoot v0.8.3
	github.com/mitchellh/cli v1.1.5
)

exclude (
	github.com/hashicorp/go-msgpack v1.1.5
	github.com/hashicorp/go-msgpack v1.1.6
)
