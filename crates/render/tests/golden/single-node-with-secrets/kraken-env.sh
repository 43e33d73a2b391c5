# Rendered by kraken-agent '0.1.0' for 'i-0000000000000001' ('consul-server,nomad-server,nomad-client') of cluster 'dev'.
# Lets a person logged in on this node run `consul members` and `nomad node status`.
# The certificate keys are readable by root and the services' groups only: use sudo.
export CONSUL_HTTP_ADDR='https://127.0.0.1:8501'
export CONSUL_CACERT='/etc/consul.d/tls/ca.pem'
export CONSUL_CLIENT_CERT='/etc/consul.d/tls/consul.pem'
export CONSUL_CLIENT_KEY='/etc/consul.d/tls/consul-key.pem'
export NOMAD_ADDR='https://127.0.0.1:4646'
export NOMAD_CACERT='/etc/nomad.d/tls/ca.pem'
export NOMAD_CLIENT_CERT='/etc/nomad.d/tls/nomad.pem'
export NOMAD_CLIENT_KEY='/etc/nomad.d/tls/nomad-key.pem'
