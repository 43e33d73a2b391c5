#!/usr/bin/env bash
# 90-cleanup.sh: make the file system an image, not a copy of the build host.
#
# Every instance started from the image must be a new machine: its own SSH
# host keys and machine-id (Consul derives its node ID from it, and two
# nodes with one ID refuse to join), cloud-init running again as on a first
# boot, and no state of a cluster: no secrets, no Consul or Nomad data, no
# agent status. Also drops package caches and shell history.
#
# Run last. Idempotent: removing what is already gone is a no-op.
set -euo pipefail

log() { printf '90-cleanup: %s\n' "$*"; }

# empty_dir DIR: remove everything inside DIR, keep DIR (owner and mode).
empty_dir() {
  [ -d "$1" ] || return 0
  find "$1" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +
  log "emptied $1"
}

# The build leftovers of the Packer file provisioners.
rm -rf /tmp/kraken

# Per-cluster state: none may ship in an image.
empty_dir /var/lib/kraken/secrets
rm -rf /run/kraken
empty_dir /opt/consul
empty_dir /opt/nomad
# Rendered configs, if something rendered them during the build.
rm -f /etc/consul.d/consul.hcl /etc/nomad.d/nomad.hcl /etc/docker/daemon.json

# cloud-init: run again on the instance as on a first boot.
if command -v cloud-init >/dev/null; then
  cloud-init clean --logs
  log "cloud-init clean --logs"
fi

# SSH host keys: regenerated at first boot (cloud-init's ssh module; on
# systems without it, `ssh-keygen -A` in sshd's unit on Debian).
rm -f /etc/ssh/ssh_host_*_key /etc/ssh/ssh_host_*_key.pub
# Keys authorised for the build (Packer's temporary key pair): cloud-init
# installs the instance's own key pair at boot.
rm -f /root/.ssh/authorized_keys
for home in /home/*; do
  if [ -d "$home" ]; then rm -f "$home/.ssh/authorized_keys"; fi
done

# machine-id: an empty file (not a missing one) makes systemd generate a new
# ID at first boot and treat it as the first boot.
if [ -e /etc/machine-id ]; then
  : >/etc/machine-id
else
  install -m 0444 /dev/null /etc/machine-id
fi
if [ -e /var/lib/dbus/machine-id ] && [ ! -L /var/lib/dbus/machine-id ]; then
  rm -f /var/lib/dbus/machine-id
  ln -s /etc/machine-id /var/lib/dbus/machine-id
fi
rm -f /var/lib/systemd/random-seed /var/lib/systemd/credential.secret
log "machine-id emptied, SSH host keys removed"

# Package caches and lists (the instance runs apt-get update before any
# install anyway).
if command -v apt-get >/dev/null; then
  apt-get clean
fi
rm -rf /var/lib/apt/lists/*
rm -f /var/cache/apt/*.bin

# Logs of the build and shell history.
rm -rf /var/log/journal/*
find /var/log -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -delete
find /var/log -type f -exec truncate -s 0 {} +
rm -f /root/.bash_history /root/.lesshst /root/.viminfo
for home in /home/*; do
  if [ -d "$home" ]; then rm -f "$home/.bash_history" "$home/.lesshst" "$home/.viminfo"; fi
done

log "done"
