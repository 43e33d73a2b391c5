#!/usr/bin/env bash
# 20-hashicorp.sh: install Consul and Nomad, unconfigured and not enabled.
#
# KRAKEN_PEERS_SOURCE says where the binaries come from:
#   apt   (default; the AMI) HashiCorp's apt repository, pinned to
#         CONSUL_VERSION / NOMAD_VERSION, key checked against its fingerprint.
#   local (the local test image) KRAKEN_CONSUL_BIN / KRAKEN_NOMAD_BIN, the
#         binaries `cargo xtask deps` built, copied to /usr/bin.
# Either way the result is /usr/bin/consul and /usr/bin/nomad, no config in
# /etc/consul.d or /etc/nomad.d, and consul.service / nomad.service not
# enabled: kraken-agent renders the configs, then enables and starts them.
# (The packages ship units in /usr/lib/systemd/system; ours, installed by
# 40-agent.sh into /etc/systemd/system, take precedence.)
#
# Optional, for a mirror of HashiCorp's repository: HASHICORP_APT_URL,
# HASHICORP_GPG_URL, HASHICORP_GPG_FINGERPRINT.
#
# Idempotent: a keyring that is there and right is kept, a pinned package
# already installed is left alone, identical binaries are not copied again.
set -euo pipefail

log() { printf '20-hashicorp: %s\n' "$*"; }
die() { printf '20-hashicorp: error: %s\n' "$*" >&2; exit 1; }
# Waits for a dpkg lock held by someone else (unattended-upgrades, cloud-init's
# package step on a fresh instance) instead of failing.
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }

source_kind=${KRAKEN_PEERS_SOURCE:-apt}
export DEBIAN_FRONTEND=noninteractive

# The primary-key fingerprints in a keyring file, one a line.
key_fingerprints() {
  local home
  home=$(mktemp -d)
  GNUPGHOME=$home gpg --batch --quiet --with-colons --show-keys "$1" 2>/dev/null |
    awk -F: '$1 == "pub" { want = 1; next } $1 == "fpr" && want { print $10; want = 0 }'
  rm -rf "$home"
}

# install_keyring URL FINGERPRINT PATH: the key at URL, dearmored, at PATH,
# only if it is exactly the key with FINGERPRINT.
install_keyring() {
  local url=$1 want=$2 path=$3 tmp
  if [ -s "$path" ] && [ "$(key_fingerprints "$path")" = "$want" ]; then
    log "keyring $path is in place"
    return
  fi
  tmp=$(mktemp)
  curl -fsSL --retry 5 --retry-connrefused "$url" | gpg --batch --yes --dearmor -o "$tmp" ||
    { rm -f "$tmp"; die "cannot fetch the signing key from $url"; }
  local got
  got=$(key_fingerprints "$tmp")
  if [ "$got" != "$want" ]; then
    rm -f "$tmp"
    die "the key from $url has fingerprint(s) '${got//$'\n'/ }', expected $want"
  fi
  install -m 0644 "$tmp" "$path"
  rm -f "$tmp"
  log "keyring $path installed (fingerprint $want)"
}

# check_version NAME BINARY VERSION: BINARY's `version` says "Name vVERSION".
check_version() {
  local name=$1 bin=$2 want=$3 got
  got=$(env -u AWS_CA_BUNDLE "$bin" version | awk 'NR == 1 { print $2 }')
  [ "$got" = "v$want" ] || die "$bin reports $got, expected v$want"
  log "$name $got"
}

# Package revision: "1.22.5" means HashiCorp's "1.22.5-1"; a value with a
# revision is used as given.
deb_version() { case $1 in *-*) printf '%s' "$1" ;; *) printf '%s-1' "$1" ;; esac; }

unit_file_exists() {
  local dir
  for dir in /etc/systemd/system /run/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
    [ -e "$dir/$1" ] && return 0
  done
  return 1
}

# disable_unit UNIT: not enabled, whether or not its file is installed yet.
disable_unit() {
  local unit=$1
  if unit_file_exists "$unit"; then
    # --root works the same in a chroot and on a live system, and needs no
    # running systemd.
    systemctl --root=/ --quiet disable "$unit" 2>/dev/null || true
  fi
  # Whatever is left (a link made by hand or by a package without a unit
  # file now): remove it.
  find /etc/systemd/system -type l -name "$unit" \
    \( -path '*.wants/*' -o -path '*.requires/*' -o -path '*.upholds/*' \) -print -delete |
    sed 's/^/20-hashicorp: removed /'
  if unit_file_exists "$unit" && systemctl --root=/ --quiet is-enabled "$unit" 2>/dev/null; then
    die "$unit is still enabled ($(systemctl --root=/ is-enabled "$unit" 2>&1))"
  fi
}

case $source_kind in
apt)
  : "${CONSUL_VERSION:?CONSUL_VERSION is required with KRAKEN_PEERS_SOURCE=apt}"
  : "${NOMAD_VERSION:?NOMAD_VERSION is required with KRAKEN_PEERS_SOURCE=apt}"
  repo_url=${HASHICORP_APT_URL:-https://apt.releases.hashicorp.com}
  gpg_url=${HASHICORP_GPG_URL:-$repo_url/gpg}
  # https://www.hashicorp.com/trust/security
  fingerprint=${HASHICORP_GPG_FINGERPRINT:-798AEC654E5C15428C8E42EEAA16FCBCA621E701}
  keyring=/usr/share/keyrings/hashicorp-archive-keyring.gpg

  # shellcheck disable=SC1091
  codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
  [ -n "$codename" ] || die "/etc/os-release has no VERSION_CODENAME"

  if ! command -v gpg >/dev/null || ! command -v curl >/dev/null; then
    apt_get update -q
    apt_get install -y -q --no-install-recommends ca-certificates curl gpg
  fi
  install_keyring "$gpg_url" "$fingerprint" "$keyring"
  line="deb [arch=$(dpkg --print-architecture) signed-by=$keyring] $repo_url $codename main"
  list=/etc/apt/sources.list.d/hashicorp.list
  if [ "$(cat "$list" 2>/dev/null)" != "$line" ]; then
    printf '%s\n' "$line" >"$list"
    log "wrote $list"
  fi
  apt_get update -q
  consul_deb=$(deb_version "$CONSUL_VERSION")
  nomad_deb=$(deb_version "$NOMAD_VERSION")
  apt_get install -y -q --no-install-recommends --allow-downgrades --allow-change-held-packages \
    "consul=$consul_deb" "nomad=$nomad_deb"
  # Unattended upgrades must not move a cluster member to another version:
  # new versions come with a new image.
  apt-mark hold consul nomad >/dev/null
  check_version Consul /usr/bin/consul "${CONSUL_VERSION%%-*}"
  check_version Nomad /usr/bin/nomad "${NOMAD_VERSION%%-*}"
  ;;
local)
  : "${KRAKEN_CONSUL_BIN:?KRAKEN_CONSUL_BIN is required with KRAKEN_PEERS_SOURCE=local}"
  : "${KRAKEN_NOMAD_BIN:?KRAKEN_NOMAD_BIN is required with KRAKEN_PEERS_SOURCE=local}"
  for pair in "consul:$KRAKEN_CONSUL_BIN" "nomad:$KRAKEN_NOMAD_BIN"; do
    name=${pair%%:*} src=${pair#*:}
    if [ ! -f "$src" ] || [ ! -x "$src" ]; then
      die "$src ($name) is not an executable file"
    fi
    if cmp -s "$src" "/usr/bin/$name"; then
      log "/usr/bin/$name is up to date"
    else
      install -m 0755 -o root -g root "$src" "/usr/bin/$name.kraken-new"
      mv -f "/usr/bin/$name.kraken-new" "/usr/bin/$name"
      log "installed /usr/bin/$name from $src"
    fi
  done
  [ -z "${CONSUL_VERSION:-}" ] || check_version Consul /usr/bin/consul "${CONSUL_VERSION%%-*}"
  [ -z "${NOMAD_VERSION:-}" ] || check_version Nomad /usr/bin/nomad "${NOMAD_VERSION%%-*}"
  ;;
*)
  die "KRAKEN_PEERS_SOURCE is '$source_kind'; expected apt or local"
  ;;
esac

# The packages' sample configs would pass the units' ConditionFileNotEmpty=
# and start an unconfigured agent; the agent renders the real ones.
for sample in /etc/consul.d/consul.hcl /etc/nomad.d/nomad.hcl; do
  if [ -e "$sample" ]; then
    rm -f "$sample"
    log "removed sample config $sample"
  fi
done

# The packages may have changed the owners or modes 10-users-and-dirs.sh set.
chown consul:consul /etc/consul.d /opt/consul
chmod 0750 /etc/consul.d /opt/consul
chown root:root /etc/nomad.d /opt/nomad
chmod 0700 /etc/nomad.d
# 0711, as 10-users-and-dirs.sh says why: a task run as its `user` passes
# through to its allocation directory.
chmod 0711 /opt/nomad

for unit in consul.service nomad.service; do
  disable_unit "$unit"
done
log "done: consul and nomad installed ($source_kind), not enabled"
