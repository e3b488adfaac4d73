#!/usr/bin/env bash
# Makes sure COMMAND is on PATH for the test tiers, installing Debian PACKAGE when running as root.
# usage: hack/ensure-debian-tool.sh COMMAND PACKAGE [HINT]
set -euo pipefail
cmd=$1 pkg=$2 hint=${3:-}
if command -v "$cmd" >/dev/null 2>&1; then exit 0; fi
if [[ "$(id -u)" == "0" ]] && command -v apt-get >/dev/null; then
  echo "ensure-debian-tool: installing Debian $pkg" >&2
  if apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg" >/dev/null; then
    command -v "$cmd" >/dev/null && exit 0
  fi
fi
echo "ensure-debian-tool: no $cmd found; install $pkg${hint:+ $hint}" >&2
exit 1
