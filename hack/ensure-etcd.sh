#!/usr/bin/env bash
# Makes sure an etcd binary is available for the integration tier (Debian's etcd-server).
set -euo pipefail
if [[ -n "${HAMI_ETCD:-}" ]]; then exit 0; fi
exec "$(dirname "$0")/ensure-debian-tool.sh" etcd etcd-server "or set HAMI_ETCD=/path/to/etcd"
