// Wrapper module that builds the nomad binary from its published Go module.
// Nomad replaces nomad/api with ./api and the api module has no tags: it is
// pinned to the pseudo-version of the commit that matches v1.11.1. Nomad's two
// non-local replaces are copied as they are.
module kraken.local/peers/nomad

go 1.25.3

require (
	github.com/hashicorp/cli v1.1.7
	github.com/hashicorp/nomad v1.11.1
	github.com/hashicorp/nomad/api v0.0.0-20251216171439-1dee0671280e
)

replace (
	github.com/Microsoft/go-winio => github.com/endocrimes/go-winio v0.4.13-0.20190628114223-fb47a8b41948
	github.com/hashicorp/hcl => github.com/hashicorp/hcl v1.0.1-nomad-1
)
