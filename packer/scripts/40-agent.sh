#!/usr/bin/env bash
# 40-agent.sh: install kraken-agent, the systemd units, and enable the agent.
#
#   KRAKEN_AGENT_BIN   (required) a release build of kraken-agent
#   KRAKEN_UNITS_DIR   (required) the repository's systemd/ directory
#   KRAKEN_AGENT_TOML  (optional) baked as /etc/kraken/agent.toml; without it
#                      the image has none and the agent uses its defaults
#                      (cloud-init user-data can still write one at boot)
#
# kraken-agent.service is enabled: it is what configures the node at boot.
# consul.service and nomad.service are installed into /etc/systemd/system
# (where they take precedence over the packages' units) but not enabled:
# the agent enables and starts them once it has written their configs.
#
# Works on a live system (the Packer build instance) and in a chroot (the
# local image), where systemd is not PID 1: enabling is then done offline.
#
# Idempotent: files are replaced only when they differ; enabling is a state.
set -euo pipefail

log() { printf '40-agent: %s\n' "$*"; }
die() { printf '40-agent: error: %s\n' "$*" >&2; exit 1; }
# Waits for a dpkg lock held by someone else (unattended-upgrades, cloud-init's
# package step on a fresh instance) instead of failing.
apt_get() { apt-get -o DPkg::Lock::Timeout=600 "$@"; }

: "${KRAKEN_AGENT_BIN:?KRAKEN_AGENT_BIN is required (a kraken-agent binary)}"
: "${KRAKEN_UNITS_DIR:?KRAKEN_UNITS_DIR is required (the systemd/ directory of the repository)}"

is_live_systemd() {
  [ -d /run/systemd/system ] && ! systemd-detect-virt --quiet --chroot 2>/dev/null
}

# put SRC DEST MODE: install SRC as DEST (root-owned, MODE) unless identical.
changed=0
put() {
  local src=$1 dest=$2 mode=$3
  if cmp -s "$src" "$dest" && [ "$(stat -c '%a %U:%G' "$dest")" = "${mode#0} root:root" ]; then
    return
  fi
  install -o root -g root -m "$mode" "$src" "$dest.kraken-new"
  mv -f "$dest.kraken-new" "$dest"
  changed=1
  log "installed $dest"
}

[ -f "$KRAKEN_AGENT_BIN" ] || die "$KRAKEN_AGENT_BIN does not exist"
put "$KRAKEN_AGENT_BIN" /usr/local/bin/kraken-agent 0755
# It must run here (right architecture, libraries present).
version=$(/usr/local/bin/kraken-agent --version) || die "/usr/local/bin/kraken-agent does not run"
log "$version"

units=("$KRAKEN_UNITS_DIR"/*.service)
[ -e "${units[0]}" ] || die "no *.service files in $KRAKEN_UNITS_DIR"
for src in "${units[@]}"; do
  put "$src" "/etc/systemd/system/$(basename "$src")" 0644
done
for unit in kraken-agent.service kraken-leave.service kraken-imds-guard.service consul.service nomad.service; do
  [ -f "/etc/systemd/system/$unit" ] || die "$KRAKEN_UNITS_DIR has no $unit"
done
# The IMDS guard (docs/iam.md): its script, and nftables to load its rules.
[ -f "$KRAKEN_UNITS_DIR/kraken-imds-guard" ] || die "$KRAKEN_UNITS_DIR has no kraken-imds-guard"
install -d -o root -g root -m 0755 /usr/local/lib/kraken
put "$KRAKEN_UNITS_DIR/kraken-imds-guard" /usr/local/lib/kraken/imds-guard 0755
if ! command -v nft >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt_get update -q
  apt_get install -y -q --no-install-recommends nftables
fi
# Debian's nftables.service loads /etc/nftables.conf, whose first line
# flushes the whole ruleset (the guard's table with it): never enabled.
if systemctl --root=/ --quiet is-enabled nftables.service 2>/dev/null; then
  systemctl --root=/ --quiet disable nftables.service
fi
# What the units run besides the services: ExecReload=/bin/kill (procps),
# which `systemctl reload consul` needs when the agent installs tokens. The
# Debian AMI has it; a minimal root file system does not.
if [ ! -x /bin/kill ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt_get update -q
  apt_get install -y -q --no-install-recommends procps
fi
if command -v systemd-analyze >/dev/null; then
  # Unknown directives, typos, commands that do not exist: a broken unit
  # must fail the build, not the first boot.
  if ! out=$(systemd-analyze verify --man=no /etc/systemd/system/kraken-agent.service \
    /etc/systemd/system/kraken-leave.service /etc/systemd/system/kraken-imds-guard.service \
    /etc/systemd/system/consul.service /etc/systemd/system/nomad.service 2>&1); then
    printf '%s\n' "$out" | sed 's/^/40-agent: systemd-analyze: /' >&2
    die "systemd-analyze verify found problems in the units"
  fi
  [ -z "$out" ] || printf '%s\n' "$out" | sed 's/^/40-agent: systemd-analyze: /'
  log "units verified (systemd-analyze verify)"
fi

if [ -n "${KRAKEN_AGENT_TOML:-}" ]; then
  [ -f "$KRAKEN_AGENT_TOML" ] || die "KRAKEN_AGENT_TOML=$KRAKEN_AGENT_TOML does not exist"
  put "$KRAKEN_AGENT_TOML" /etc/kraken/agent.toml 0644
else
  log "no KRAKEN_AGENT_TOML: no /etc/kraken/agent.toml baked (the agent's defaults apply)"
fi

if is_live_systemd; then
  [ "$changed" = 0 ] || systemctl daemon-reload
  systemctl enable --quiet kraken-agent.service kraken-leave.service kraken-imds-guard.service
else
  # No systemd as PID 1 (a chroot): --root edits the unit links offline.
  if ! systemctl --root=/ --quiet enable kraken-agent.service kraken-leave.service kraken-imds-guard.service; then
    log "systemctl --root=/ enable failed; creating the links by hand"
    install -d -m 0755 /etc/systemd/system/multi-user.target.wants
    for unit in kraken-agent.service kraken-leave.service kraken-imds-guard.service; do
      ln -sfn "/etc/systemd/system/$unit" "/etc/systemd/system/multi-user.target.wants/$unit"
    done
  fi
fi

for unit in kraken-agent.service kraken-leave.service kraken-imds-guard.service; do
  link=/etc/systemd/system/multi-user.target.wants/$unit
  [ "$(readlink -f "$link")" = "/etc/systemd/system/$unit" ] ||
    die "$link does not point at /etc/systemd/system/$unit"
done
for unit in consul.service nomad.service; do
  if systemctl --root=/ --quiet is-enabled "$unit" 2>/dev/null; then
    die "$unit is enabled; kraken-agent must be the one to enable it"
  fi
done
log "done: kraken-agent.service, kraken-leave.service and kraken-imds-guard.service enabled; consul.service and nomad.service installed, not enabled"
