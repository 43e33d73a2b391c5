#!/usr/bin/env bash
# 30-docker.sh: install the Docker engine Nomad clients run tasks with.
#
# KRAKEN_PEERS_SOURCE:
#   apt   (default; the AMI) Docker CE from Docker's apt repository
#         (download.docker.com), key checked against its fingerprint;
#         DOCKER_VERSION optionally pins docker-ce/docker-ce-cli (an apt
#         version string such as 5:27.5.1-1~debian.12~bookworm).
#   local (the local test image) Debian's own docker.io package, and only
#         when KRAKEN_INSTALL_DOCKER=1 (`cargo xtask cluster` sets it);
#         otherwise nothing is installed.
#
# Docker's daemon.json (log rotation, live-restore) is written by
# kraken-agent on nomad-client nodes, which then enables and starts
# docker.service (`[docker] unit` in agent.toml). So the engine is installed
# here but left disabled and stopped: Consul and Nomad servers never run it,
# and a client's Docker first starts with the agent's daemon.json. Set
# KRAKEN_DOCKER_ENABLE=1 to enable it in the image instead (it then starts
# at boot with Docker's defaults and is restarted once the agent has written
# daemon.json; live-restore keeps containers running across that restart).
#
# Optional, for a mirror: DOCKER_APT_URL, DOCKER_GPG_URL, DOCKER_GPG_FINGERPRINT.
#
# Idempotent: keyring and source list are rewritten only when wrong,
# installed packages are left alone, enabling/disabling is a state.
set -euo pipefail

log() { printf '30-docker: %s\n' "$*"; }
die() { printf '30-docker: error: %s\n' "$*" >&2; exit 1; }
# Waits for a dpkg lock held by someone else (unattended-upgrades, cloud-init's
# package step on a fresh instance) instead of failing.
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }

source_kind=${KRAKEN_PEERS_SOURCE:-apt}
enable=${KRAKEN_DOCKER_ENABLE:-0}
export DEBIAN_FRONTEND=noninteractive

key_fingerprints() {
  local home
  home=$(mktemp -d)
  GNUPGHOME=$home gpg --batch --quiet --with-colons --show-keys "$1" 2>/dev/null |
    awk -F: '$1 == "pub" { want = 1; next } $1 == "fpr" && want { print $10; want = 0 }'
  rm -rf "$home"
}

install_keyring() {
  local url=$1 want=$2 path=$3 tmp got
  if [ -s "$path" ] && [ "$(key_fingerprints "$path")" = "$want" ]; then
    log "keyring $path is in place"
    return
  fi
  tmp=$(mktemp)
  curl -fsSL --retry 5 --retry-connrefused "$url" | gpg --batch --yes --dearmor -o "$tmp" ||
    { rm -f "$tmp"; die "cannot fetch the signing key from $url"; }
  got=$(key_fingerprints "$tmp")
  if [ "$got" != "$want" ]; then
    rm -f "$tmp"
    die "the key from $url has fingerprint(s) '${got//$'\n'/ }', expected $want"
  fi
  install -m 0644 "$tmp" "$path"
  rm -f "$tmp"
  log "keyring $path installed (fingerprint $want)"
}

is_live_systemd() {
  [ -d /run/systemd/system ] && ! systemd-detect-virt --quiet --chroot 2>/dev/null
}

unit_file_exists() {
  local dir
  for dir in /etc/systemd/system /usr/lib/systemd/system /lib/systemd/system; do
    [ -e "$dir/$1" ] && return 0
  done
  return 1
}

installed=0
case $source_kind in
apt)
  repo_url=${DOCKER_APT_URL:-https://download.docker.com/linux/debian}
  gpg_url=${DOCKER_GPG_URL:-$repo_url/gpg}
  # https://docs.docker.com/engine/install/debian/
  fingerprint=${DOCKER_GPG_FINGERPRINT:-9DC858229FC7DD38854AE2D88D81803C0EBFCD88}
  keyring=/usr/share/keyrings/docker-archive-keyring.gpg
  # shellcheck disable=SC1091
  codename=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
  [ -n "$codename" ] || die "/etc/os-release has no VERSION_CODENAME"

  if ! command -v gpg >/dev/null || ! command -v curl >/dev/null; then
    apt_get update -q
    apt_get install -y -q --no-install-recommends ca-certificates curl gpg
  fi
  install_keyring "$gpg_url" "$fingerprint" "$keyring"
  line="deb [arch=$(dpkg --print-architecture) signed-by=$keyring] $repo_url $codename stable"
  list=/etc/apt/sources.list.d/docker.list
  if [ "$(cat "$list" 2>/dev/null)" != "$line" ]; then
    printf '%s\n' "$line" >"$list"
    log "wrote $list"
  fi
  apt_get update -q
  pkgs=(docker-ce docker-ce-cli containerd.io)
  if [ -n "${DOCKER_VERSION:-}" ]; then
    pkgs=("docker-ce=$DOCKER_VERSION" "docker-ce-cli=$DOCKER_VERSION" containerd.io)
  fi
  apt_get install -y -q --no-install-recommends --allow-downgrades "${pkgs[@]}"
  installed=1
  ;;
local)
  if [ "${KRAKEN_INSTALL_DOCKER:-0}" = 1 ]; then
    apt_get update -q
    apt_get install -y -q --no-install-recommends docker.io
    installed=1
  else
    log "KRAKEN_PEERS_SOURCE=local and KRAKEN_INSTALL_DOCKER is not 1: no Docker engine"
  fi
  ;;
*)
  die "KRAKEN_PEERS_SOURCE is '$source_kind'; expected apt or local"
  ;;
esac

if [ "$installed" = 1 ]; then
  command -v dockerd >/dev/null || die "dockerd is not installed"
  # A daemon.json from a package or an earlier build would be used until the
  # agent writes its own: none in the image.
  rm -f /etc/docker/daemon.json
  units=(docker.service docker.socket)
  unit_file_exists containerd.service && units+=(containerd.service)
  if [ "$enable" = 1 ]; then
    systemctl --root=/ --quiet enable "${units[@]}"
    log "enabled ${units[*]}"
  else
    # The packages enable (and on a live system start) the engine.
    if is_live_systemd; then
      systemctl stop "${units[@]}" || true
    fi
    systemctl --root=/ --quiet disable "${units[@]}"
    for unit in "${units[@]}"; do
      if systemctl --root=/ --quiet is-enabled "$unit" 2>/dev/null; then
        die "$unit is still enabled"
      fi
    done
    log "installed; ${units[*]} not enabled (kraken-agent enables Docker on nomad-client nodes)"
  fi
fi
log "done"
