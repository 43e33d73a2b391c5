# Rendered by kraken-agent '0.1.0' for 'i-0c0a5e7e000000007' ('consul-server') of cluster 'kraken'.
# Lets a person logged in on this node run `consul members` and `nomad node status`.
# The certificate keys are readable by root and the services' groups only: use sudo.
export CONSUL_HTTP_ADDR='https://127.0.0.1:8501'
export CONSUL_CACERT='/etc/consul.d/tls/ca.pem'
export CONSUL_CLIENT_CERT='/etc/consul.d/tls/consul.pem'
export CONSUL_CLIENT_KEY='/etc/consul.d/tls/consul-key.pem'
