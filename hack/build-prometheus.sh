#!/usr/bin/env bash
# Builds prometheus and promtool from the github.com/prometheus/prometheus Go module (through the Go
# module proxy) and caches them outside the repository. Idempotent: cached binaries that report the
# pinned version are reused. Prints the directory holding both binaries.
#
# Prometheus v3.x is published to Go as v0.3xx.y (v0.316.0 is Prometheus 3.16.0). The web UI's
# assets are only embedded under the `builtinassets` build tag; without it the binary serves the HTTP
# API (all the dashboard check needs) and no UI.
#
# A cold build (module downloads included) took 10 min on 2 shared cores.
#
#   hack/build-prometheus.sh                        -> ~/.cache/hami/prometheus-<version>/
#   PROMETHEUS_VERSION=v0.316.0 hack/build-prometheus.sh
set -euo pipefail

version="${PROMETHEUS_VERSION:-v0.316.0}"
cache="${HAMI_CACHE_DIR:-$HOME/.cache/hami}"
out="$cache/prometheus-$version"
# v0.3AB.C -> 3.AB.C, the version the binaries report.
release="$(sed -E 's/^v0\.3([0-9]{2})\.([0-9]+)$/3.\1.\2/; s/^3\.0([0-9])/3.\1/' <<<"$version")"
reports() { "$out/$1" --version 2>/dev/null | head -1 | grep -q "version $release "; }
if reports prometheus && reports promtool; then
  echo "$out"; exit 0
fi
command -v go >/dev/null || { echo "build-prometheus: Go toolchain not found (needed to build prometheus)" >&2; exit 1; }

mkdir -p "$out"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
echo "build-prometheus: compiling prometheus $version ($release; first time takes several minutes)" >&2
ldflags="-s -w -X github.com/prometheus/common/version.Version=$release"
ldflags+=" -X github.com/prometheus/common/version.Branch=HEAD"
ldflags+=" -X github.com/prometheus/common/version.Revision=$version"
GOBIN="$out" go install -p 2 -trimpath -ldflags="$ldflags" \
  "github.com/prometheus/prometheus/cmd/prometheus@$version" \
  "github.com/prometheus/prometheus/cmd/promtool@$version" >&2
reports prometheus && reports promtool \
  || { echo "build-prometheus: $out does not hold prometheus/promtool $release" >&2; exit 1; }
echo "$out"
