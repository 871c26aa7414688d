#!/usr/bin/env bash
# Installs everything ntmobile needs on a fresh Debian 12 machine (as root): system packages
# (apt-get) and the Python package with its pinned dependencies in ./.venv (pip).
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv python3-pip
  iproute2 nftables conntrack iputils-ping procps psmisc
  dnsmasq-base nsd unbound bind9-dnsutils
  iperf3 iperf curl openssh-server openssh-client vsftpd lftp busybox
  wireguard-go wireguard-tools openvpn socat
  dbus-daemon
  postgresql keepalived conntrackd prometheus tftpd-hpa tftp-hpa nebula
)

if [ "$(id -u)" -ne 0 ]; then
  echo "ntmobile setup: run as root (it installs system packages with apt-get)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "ntmobile setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq -o DPkg::Lock::Timeout=300
  # Service packages must not start daemons on the host: the lab starts its own, in namespaces.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends "${missing[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# systemd-resolved for the lab's resolved host (lab/resolved.py): unpacked, never installed (its
# package would take this machine's /etc/resolv.conf over).
RESOLVED_DIR=/var/cache/ntmobile/resolved
if [ ! -x "$RESOLVED_DIR/root/lib/systemd/systemd-resolved" ]; then
  echo "ntmobile setup: unpacking systemd-resolved into $RESOLVED_DIR (for the lab; not installed)"
  mkdir -p "$RESOLVED_DIR" && rm -f "$RESOLVED_DIR"/*.deb
  want="systemd-resolved=$(dpkg-query -W -f='${Version}' systemd)"
  get() { (cd "$RESOLVED_DIR" && apt-get download -qq "$@" 2>/dev/null); }
  get "$want" || get systemd-resolved || { apt-get update -qq && { get "$want" || get systemd-resolved; }; }
  dpkg -x "$RESOLVED_DIR"/systemd-resolved_*.deb "$RESOLVED_DIR/root"
fi

PY=${NTM_PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.ntm-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev,bench]'
  touch "$stamp"
fi

# `ntm` on PATH for every shell (root's and other users'): a link to this checkout's command. The last
# checkout set up wins; NTM_NO_LINK=1 leaves /usr/local/bin alone.
if [ "${NTM_NO_LINK:-0}" != 1 ]; then
  target="$PWD/.venv/bin/ntm"
  if [ "$(readlink /usr/local/bin/ntm 2>/dev/null || true)" != "$target" ]; then
    ln -sfn "$target" /usr/local/bin/ntm
    echo "ntmobile setup: /usr/local/bin/ntm -> $target"
  fi
fi
