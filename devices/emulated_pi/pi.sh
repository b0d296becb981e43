#!/usr/bin/env bash
# An emulated Raspberry Pi (aarch64 Debian bookworm under qemu-user), reached over SSH on loopback.
#
#   pi.sh build                 build the root file system once (cached; ~5 min), with Python 3.11,
#                               numpy, onnxruntime and ai-edge-litert in /opt/edgeport-venv
#   pi.sh start PORT PUBKEY     mount /proc and /dev, start an aarch64 sshd on 127.0.0.1:PORT that
#                               lets user `pi` in with PUBKEY (key only)
#   pi.sh stop                  stop that sshd and unmount
#
# Needs root (debootstrap, chroot, mounts). /sys is never mounted: onnxruntime crashes under qemu
# when it reads the host's x86 /sys (see shared/FACTS.md), so this Pi runs ONNX Runtime and TFLite,
# not OpenVINO. Latency measured here is emulated (100-450x slower than the host): never quote it.
set -euo pipefail

ROOT="${EDGEPORT_PI_ROOT:-${XDG_CACHE_HOME:-$HOME/.cache}/edgeport/emulated-pi}"
ROOTFS="$ROOT/rootfs"
MIRROR="${EDGEPORT_PI_MIRROR:-http://deb.debian.org/debian}"
PACKAGES="numpy<2.5 onnxruntime==1.32.0 ai-edge-litert==2.3.0"
STAMP="$ROOTFS/.edgeport-built"

log() { echo "pi.sh: $*" >&2; }

need_tools() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  command -v ssh-keygen >/dev/null || missing+=(openssh-client)
  if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

enable_binfmt() {
  # The kernel runs aarch64 binaries through qemu once binfmt_misc knows the format.
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { log "binfmt_misc has no qemu-aarch64 entry"; exit 1; }
}

build() {
  need_tools
  enable_binfmt
  if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$PACKAGES" ]; then
    log "cached: $ROOTFS"
    return
  fi
  unmount_all
  rm -rf "$ROOTFS" "$ROOTFS.partial"
  mkdir -p "$ROOT"
  local new="$ROOTFS.partial"
  log "debootstrap (first stage) into $new"
  debootstrap --arch=arm64 --foreign --variant=minbase \
    --include=python3,python3-venv,python3-pip,ca-certificates,openssh-server,procps \
    bookworm "$new" "$MIRROR" >/dev/null
  log "debootstrap (second stage, under qemu; a few minutes)"
  chroot "$new" /debootstrap/debootstrap --second-stage >/dev/null
  cp /etc/resolv.conf "$new/etc/resolv.conf"
  # pip inside the root trusts what this machine trusts.
  cp /usr/local/share/ca-certificates/*.crt "$new/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "$new" update-ca-certificates >/dev/null 2>&1
  log "python packages: $PACKAGES"
  chroot "$new" /usr/bin/python3 -m venv /opt/edgeport-venv
  chroot "$new" env PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 \
    /opt/edgeport-venv/bin/pip install --quiet $PACKAGES
  chroot "$new" /usr/sbin/useradd --create-home --shell /bin/bash pi
  chroot "$new" /usr/sbin/usermod -p '*' pi   # no password, but not "locked": key login works
  echo "$PACKAGES" > "$new/.edgeport-built"
  mv "$new" "$ROOTFS"
  log "built $ROOTFS ($(du -sh "$ROOTFS" | cut -f1))"
}

mounted() { mountpoint -q "$1"; }

unmount_all() {
  # Every mount under the cache, deepest first: debootstrap's second stage mounts /proc and /sys
  # itself, and a build killed half-way leaves them behind, where `rm -rf` would walk into them.
  local m
  awk -v root="$ROOT/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r | while read -r m; do
    umount -l "$m" || true
  done
}

start() {
  local port="$1" pubkey="$2"
  [ -f "$STAMP" ] || { log "not built: run pi.sh build first"; exit 2; }
  enable_binfmt
  mounted "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
  mounted "$ROOTFS/dev" || mount --bind /dev "$ROOTFS/dev"
  local etc="$ROOTFS/etc/edgeport-ssh"
  mkdir -p "$etc" "$ROOTFS/run/sshd"
  [ -f "$etc/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$etc/host_ed25519"
  install -m 0644 "$pubkey" "$etc/authorized_keys"
  cat > "$etc/sshd_config" <<CONF
Port $port
ListenAddress 127.0.0.1
HostKey /etc/edgeport-ssh/host_ed25519
PidFile /run/edgeport-sshd.pid
AuthorizedKeysFile /etc/edgeport-ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
AllowUsers pi
CONF
  stop_sshd
  chroot "$ROOTFS" /usr/sbin/sshd -f /etc/edgeport-ssh/sshd_config -E /var/log/edgeport-sshd.log
  for _ in $(seq 100); do
    [ -s "$ROOTFS/run/edgeport-sshd.pid" ] && return
    sleep 0.2
  done
  log "sshd did not start; see $ROOTFS/var/log/edgeport-sshd.log"
  exit 1
}

stop_sshd() {
  local pidfile="$ROOTFS/run/edgeport-sshd.pid"
  if [ -s "$pidfile" ]; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  fi
}

stop() {
  stop_sshd
  unmount_all
}

case "${1:-}" in
  build) build ;;
  start) [ $# -eq 3 ] || { echo "usage: pi.sh start PORT PUBKEY" >&2; exit 2; }; start "$2" "$3" ;;
  stop) stop ;;
  root) echo "$ROOTFS" ;;
  *) sed -n '2,11p' "$0" >&2; exit 2 ;;
esac
