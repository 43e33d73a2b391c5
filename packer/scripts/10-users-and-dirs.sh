#!/usr/bin/env bash
# 10-users-and-dirs.sh: the service users and the directories the agent and
# the services expect, with their owners and modes.
#
# Why first: HashiCorp's packages create `consul`/`nomad` users of their own
# when none exist (with a home and a shell we do not want); creating them
# here first makes the packages keep ours. The modes are the ones the agent
# writes into and `kraken-agent doctor` checks: configs are 0640 files in
# 0750 directories, secrets never readable by anyone but root.
#
# Idempotent: users are created only when missing, and every directory's
# owner and mode are (re)set on each run.
set -euo pipefail

log() { printf '10-users-and-dirs: %s\n' "$*"; }

# On a freshly launched build instance cloud-init may still be creating
# users and running apt: wait for it before touching /etc/passwd or dpkg.
# Only on a live system: in a chroot cloud-init never runs, and waiting for
# it would hang.
if [ -d /run/systemd/system ] && ! systemd-detect-virt --quiet --chroot 2>/dev/null &&
  command -v cloud-init >/dev/null; then
  log "waiting for cloud-init to finish"
  # Non-zero when cloud-init reported errors: worth a line, not a failed build.
  cloud-init status --wait >/dev/null || log "cloud-init finished with status $? (continuing)"
fi

nologin=/usr/sbin/nologin
[ -x "$nologin" ] || nologin=/bin/false

# ensure_user NAME: a system user and group NAME, no login shell, no home.
ensure_user() {
  local name=$1
  if ! getent group "$name" >/dev/null; then
    groupadd --system "$name"
    log "created group $name"
  fi
  if ! getent passwd "$name" >/dev/null; then
    useradd --system --gid "$name" --no-create-home --home-dir /nonexistent \
      --shell "$nologin" --comment "$name agent (kraken)" "$name"
    log "created user $name"
  elif [ "$(getent passwd "$name" | cut -d: -f7)" != "$nologin" ]; then
    # A user made by someone else (an earlier package) keeps its uid, but
    # gets no login shell.
    usermod --shell "$nologin" "$name"
    log "user $name: login shell set to $nologin"
  fi
}

# ensure_dir OWNER:GROUP MODE PATH: create PATH if missing, then set its
# owner and mode (whatever they were).
ensure_dir() {
  local owner=$1 mode=$2 path=$3
  install -d -o "${owner%%:*}" -g "${owner##*:}" -m "$mode" "$path"
  # install -d leaves an existing directory's owner and mode alone.
  chown "$owner" "$path"
  chmod "$mode" "$path"
}

ensure_user consul
# Nomad itself runs as root (clients manage cgroups, mounts and Docker); the
# user exists for parity with HashiCorp's package, which creates it anyway.
ensure_user nomad

# Consul reads its config as `consul`; the agent writes consul.hcl there
# (consul:consul 0640).
ensure_dir consul:consul 0750 /etc/consul.d
# Nomad runs as root and its config carries its Consul token.
# 0700: Nomad runs as root, and group root is no boundary on a client
# (Nomad 1.11.1 gives tasks run as a `user` the supplementary group root).
ensure_dir root:root 0700 /etc/nomad.d
# Data directories (the rendered configs' data_dir).
ensure_dir consul:consul 0750 /opt/consul
# 0711: tasks that run as an unprivileged user (raw_exec with `user`) must
# pass through it to their allocation directory; they cannot list it, and
# Nomad makes its client state (client/) 0700 below it.
ensure_dir root:root 0711 /opt/nomad
# agent.toml and agent.env: site settings, baked or written by cloud-init.
ensure_dir root:root 0755 /etc/kraken
# The `dir` secret store's default root (secrets.dir).
ensure_dir root:root 0755 /var/lib/kraken
ensure_dir root:root 0700 /var/lib/kraken/secrets
# Docker's daemon.json is written by the agent on nomad-client nodes.
ensure_dir root:root 0755 /etc/docker

log "done"
