#!/usr/bin/env bash
# Builds helm from the helm.sh/helm/v4 Go module (through the Go module proxy) and caches it outside
# the repository. Idempotent: a cached binary that reports the pinned version is reused. Prints the
# path of the binary.
#
#   hack/build-helm.sh                 -> ~/.cache/hami/helm-<version>/helm
#   HELM_VERSION=v4.3.2 hack/build-helm.sh
set -euo pipefail

version="${HELM_VERSION:-v4.3.2}"
cache="${HAMI_CACHE_DIR:-$HOME/.cache/hami}"
out="$cache/helm-$version"
bin="$out/helm"
if [[ -x "$bin" ]] && "$bin" version --template '{{.Version}}' 2>/dev/null | grep -qx "$version"; then
  echo "$bin"; exit 0
fi
command -v go >/dev/null || { echo "build-helm: Go toolchain not found (needed to build helm)" >&2; exit 1; }

mkdir -p "$out"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
echo "build-helm: compiling helm $version (first time takes a few minutes)" >&2
ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$version"
ldflags+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
GOBIN="$out" go install -p 2 -trimpath -ldflags="$ldflags" "helm.sh/helm/v4/cmd/helm@$version" >&2
"$bin" version --template '{{.Version}}' | grep -qx "$version" \
  || { echo "build-helm: $bin does not report $version" >&2; exit 1; }
echo "$bin"
