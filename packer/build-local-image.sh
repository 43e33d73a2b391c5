#!/usr/bin/env bash
# build-local-image.sh DIR: the local test image, a Debian 12 root file
# system for systemd-nspawn, built by the same provisioning scripts as the
# AMI (packer/scripts/[0-9][0-9]-*.sh, in order) with KRAKEN_PEERS_SOURCE=local:
# Consul and Nomad are the binaries `cargo xtask deps` built, instead of
# HashiCorp's apt repository, and there is no Docker engine unless
# KRAKEN_INSTALL_DOCKER=1 (then Debian's docker.io). Nothing else differs.
#
# The debootstrap base is made once and cached as a tarball under
# $KRAKEN_CACHE/image/. DIR is rebuilt only when an input changed (scripts,
# units, binaries, this file, the settings below): a second run with the same
# inputs does nothing. A rebuild is made next to DIR and swapped in, so DIR
# is never half-built. Boot copies or overlays of DIR, not DIR itself.
#
# Environment (all optional):
#   KRAKEN_CACHE          cache root (default ~/.cache/kraken)
#   KRAKEN_AGENT_BIN      kraken-agent binary; default: `cargo build -p
#                         kraken-agent` (KRAKEN_AGENT_PROFILE=release for
#                         --release) into CARGO_TARGET_DIR (default
#                         the checkout's target/), and that binary
#   KRAKEN_CONSUL_BIN     default $CONSUL_BIN (`eval "$(cargo xtask deps)"`),
#                         else the one $KRAKEN_CACHE/bin/consul-*
#   KRAKEN_NOMAD_BIN      default $NOMAD_BIN, else the one $KRAKEN_CACHE/bin/nomad-*
#   KRAKEN_AGENT_TOML     an agent.toml to bake as /etc/kraken/agent.toml
#   KRAKEN_INSTALL_DOCKER 1: install Debian's docker.io (default 0)
#   KRAKEN_DEBIAN_MIRROR  debootstrap mirror (default http://deb.debian.org/debian)
#
# Needs root, debootstrap and chroot. Prints the image directory when done.
set -euo pipefail

log() { printf 'build-local-image: %s\n' "$*" >&2; }
die() { printf 'build-local-image: error: %s\n' "$*" >&2; exit 1; }

[ $# -eq 1 ] || die "usage: $0 DIR"
[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot, file owners)"
for tool in debootstrap chroot tar sha256sum flock; do
  command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install debootstrap)"
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
target=$(realpath -m "$1")
case $target in
/ | /bin | /boot | /dev | /etc | /home | /lib* | /opt | /proc | /root | /run | /sbin | /srv | /sys | /tmp | /usr | /var)
  die "refusing to build into $target"
  ;;
esac

cache=${KRAKEN_CACHE:-$HOME/.cache/kraken}
image_cache=$cache/image
mkdir -p "$image_cache"
mirror=${KRAKEN_DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
include=systemd,systemd-sysv,dbus,iproute2,ca-certificates,curl
install_docker=${KRAKEN_INSTALL_DOCKER:-0}

# One build at a time (per cache): concurrent debootstraps or swaps of the
# same DIR would trample each other.
exec 9>"$image_cache/.lock"
if ! flock -n 9; then
  log "waiting for another build-local-image.sh to finish"
  flock 9
fi

# --- inputs ------------------------------------------------------------------

only_match() { # the single file matching a glob, or nothing
  local matches=()
  for f in "$@"; do [ -f "$f" ] && matches+=("$f"); done
  [ "${#matches[@]}" = 1 ] && printf '%s' "${matches[0]}"
  return 0
}
consul_bin=${KRAKEN_CONSUL_BIN:-${CONSUL_BIN:-$(only_match "$cache"/bin/consul-[0-9]*[0-9])}}
nomad_bin=${KRAKEN_NOMAD_BIN:-${NOMAD_BIN:-$(only_match "$cache"/bin/nomad-[0-9]*[0-9])}}
if [ -z "$consul_bin" ] || [ ! -x "$consul_bin" ]; then
  die "no Consul binary: set KRAKEN_CONSUL_BIN, or run eval \"\$(cargo xtask deps)\" first"
fi
if [ -z "$nomad_bin" ] || [ ! -x "$nomad_bin" ]; then
  die "no Nomad binary: set KRAKEN_NOMAD_BIN, or run eval \"\$(cargo xtask deps)\" first"
fi

agent_bin=${KRAKEN_AGENT_BIN:-}
if [ -z "$agent_bin" ]; then
  profile=${KRAKEN_AGENT_PROFILE:-debug}
  target_dir=${CARGO_TARGET_DIR:-$repo/target}
  log "building kraken-agent ($profile) into $target_dir"
  args=(build --quiet -p kraken-agent --manifest-path "$repo/Cargo.toml")
  [ "$profile" = release ] && args+=(--release)
  CARGO_TARGET_DIR=$target_dir cargo "${args[@]}" >&2
  agent_bin=$target_dir/$profile/kraken-agent
fi
[ -x "$agent_bin" ] || die "$agent_bin is not an executable file"
agent_toml=${KRAKEN_AGENT_TOML:-}
[ -z "$agent_toml" ] || [ -f "$agent_toml" ] || die "KRAKEN_AGENT_TOML=$agent_toml does not exist"

scripts=("$here"/scripts/[0-9][0-9]-*.sh)
[ -e "${scripts[0]}" ] || die "no scripts in $here/scripts"
units=("$repo"/systemd/*.service "$repo"/systemd/kraken-imds-guard)

# --- the cached debootstrap base ---------------------------------------------

base_id=$(printf '%s\n' "$suite" "$include" "$mirror" minbase | sha256sum | cut -c1-12)
base_tar=$image_cache/debian-$suite-minbase-$base_id.tar
if [ ! -s "$base_tar" ]; then
  log "debootstrap $suite ($include) from $mirror: about 75 s, cached as $base_tar"
  work=$(mktemp -d "$image_cache/.debootstrap.XXXXXX")
  # Removes the half-made base on failure or interruption.
  trap 'rm -rf --one-file-system "$work" "$base_tar.tmp"' EXIT
  debootstrap --variant=minbase --include="$include" "$suite" "$work/root" "$mirror" \
    >"$image_cache/debootstrap.log" 2>&1 ||
    die "debootstrap failed: see $image_cache/debootstrap.log"
  tar --numeric-owner --xattrs --acls -C "$work/root" -cpf "$base_tar.tmp" .
  mv -f "$base_tar.tmp" "$base_tar"
  rm -rf --one-file-system "$work"
  trap - EXIT
fi

# --- up to date? -------------------------------------------------------------

stamp_name=.kraken-image
inputs=$(
  {
    printf 'base %s\nsource local\ndocker %s\n' "$(basename "$base_tar")" "$install_docker"
    sha256sum "$here/build-local-image.sh" "${scripts[@]}" "${units[@]}" | sed "s|  $repo/|  |"
    printf 'agent %s\nconsul %s\nnomad %s\n' \
      "$(sha256sum <"$agent_bin" | cut -d' ' -f1)" \
      "$(sha256sum <"$consul_bin" | cut -d' ' -f1)" \
      "$(sha256sum <"$nomad_bin" | cut -d' ' -f1)"
    [ -z "$agent_toml" ] || printf 'agent.toml %s\n' "$(sha256sum <"$agent_toml" | cut -d' ' -f1)"
  } | sha256sum | cut -d' ' -f1
)
if [ -d "$target" ] && [ "$(cat "$target/$stamp_name" 2>/dev/null)" = "$inputs" ]; then
  log "$target is up to date"
  printf '%s\n' "$target"
  exit 0
fi
if [ -e "$target" ] && [ ! -e "$target/$stamp_name" ] && [ -n "$(ls -A "$target" 2>/dev/null)" ]; then
  die "$target exists and is not an image this script built: remove it first"
fi

# --- build next to DIR, then swap --------------------------------------------

build=$target.build.$$
mounted=()
# remove_tree DIR: never follows a mount out of DIR's file system; refuses
# while anything is still mounted below DIR.
remove_tree() {
  if awk -v d="$1/" 'index($5 "/", d) == 1 { found = 1 } END { exit !found }' /proc/self/mountinfo; then
    log "not removing $1: something is still mounted below it"
    return 1
  fi
  rm -rf --one-file-system "$1"
}
cleanup() {
  local m
  for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  [ ! -e "$build" ] || remove_tree "$build"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$build"
log "unpacking the base into $build"
tar --numeric-owner --xattrs --acls -C "$build" -xpf "$base_tar"

# What a chroot needs for apt and maintainer scripts: /proc, /sys and a
# private devpts. (debootstrap made the basic nodes in /dev; the host's /dev
# is not bound in.)
[ -c "$build/dev/null" ] || die "the base has no /dev/null; remove $base_tar and retry"
mkdir -p "$build/dev/pts"
mount -t proc proc "$build/proc" && mounted=("$build/proc" "${mounted[@]}")
mount -t sysfs -o ro sysfs "$build/sys" && mounted=("$build/sys" "${mounted[@]}")
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$build/dev/pts" &&
  mounted=("$build/dev/pts" "${mounted[@]}")
# Maintainer scripts must not start services in the chroot (on the host).
printf '#!/bin/sh\nexit 101\n' >"$build/usr/sbin/policy-rc.d"
chmod 0755 "$build/usr/sbin/policy-rc.d"

# Stage what Packer uploads to /tmp/kraken on AWS, plus the two binaries.
stage=$build/tmp/kraken
install -d -m 0755 "$stage" "$stage/units" "$build/tmp/kraken-scripts"
install -m 0755 "$agent_bin" "$stage/kraken-agent"
install -m 0755 "$consul_bin" "$stage/consul"
install -m 0755 "$nomad_bin" "$stage/nomad"
install -m 0644 "${units[@]}" "$stage/units/"
[ -z "$agent_toml" ] || install -m 0644 "$agent_toml" "$stage/agent.toml"
install -m 0755 "${scripts[@]}" "$build/tmp/kraken-scripts/"

# Binaries named like the cache's (consul-1.22.5) are checked against that
# version by 20-hashicorp.sh, as the AMI's packages are.
version_of() { basename "$1" | sed -n "s/^$2-\([0-9][0-9.]*[0-9]\)\$/\1/p"; }
env_vars=(
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  HOME=/root
  LANG=C.UTF-8
  DEBIAN_FRONTEND=noninteractive
  KRAKEN_PEERS_SOURCE=local
  KRAKEN_CONSUL_BIN=/tmp/kraken/consul
  KRAKEN_NOMAD_BIN=/tmp/kraken/nomad
  CONSUL_VERSION="$(version_of "$consul_bin" consul)"
  NOMAD_VERSION="$(version_of "$nomad_bin" nomad)"
  KRAKEN_INSTALL_DOCKER="$install_docker"
  KRAKEN_AGENT_BIN=/tmp/kraken/kraken-agent
  KRAKEN_UNITS_DIR=/tmp/kraken/units
  KRAKEN_AGENT_TOML="${agent_toml:+/tmp/kraken/agent.toml}"
)
for script in "${scripts[@]}"; do
  name=$(basename "$script")
  log "running $name"
  chroot "$build" /usr/bin/env -i "${env_vars[@]}" /bin/bash "/tmp/kraken-scripts/$name" >&2 ||
    die "$name failed"
done

rm -f "$build/usr/sbin/policy-rc.d"
rm -rf "$build/tmp/kraken" "$build/tmp/kraken-scripts"
for m in "${mounted[@]}"; do umount "$m"; done
mounted=()

# The image as the cluster tests expect it.
[ -L "$build/etc/systemd/system/multi-user.target.wants/kraken-agent.service" ] ||
  die "kraken-agent.service is not enabled in the image"
for bin in usr/bin/consul usr/bin/nomad usr/local/bin/kraken-agent; do
  [ -x "$build/$bin" ] || die "/$bin is missing from the image"
done

printf '%s\n' "$inputs" >"$build/$stamp_name"
if [ -e "$target" ]; then
  old=$target.old.$$
  mv "$target" "$old"
  mv "$build" "$target"
  remove_tree "$old"
else
  mkdir -p "$(dirname "$target")"
  mv "$build" "$target"
fi
trap - EXIT
log "image ready: $target"
printf '%s\n' "$target"
