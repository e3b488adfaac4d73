#!/usr/bin/env bash
# Makes sure an etcd binary is available for the integration tier (Debian's etcd-server).
set -euo pipefail
if command -v etcd >/dev/null 2>&1 || [[ -n "${HAMI_ETCD:-}" ]]; then exit 0; fi
if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null; then
  echo "ensure-etcd: installing Debian etcd-server" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
  command -v etcd >/dev/null && exit 0
fi
echo "ensure-etcd: no etcd binary found; install etcd-server or set HAMI_ETCD=/path/to/etcd" >&2
exit 1
