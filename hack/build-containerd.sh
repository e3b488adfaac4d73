#!/usr/bin/env bash
# Builds containerd v2 (containerd, containerd-shim-runc-v2, ctr) from the Go module proxy and caches
# it outside the repository; prints the directory holding the binaries. The real-node tier and
# `make demo` run it: Debian's containerd 1.6 cannot inject CDI devices, v2 always can.
#
#   hack/build-containerd.sh                          -> ~/.cache/hami/containerd-<version>/
#   CONTAINERD_VERSION=v2.4.2 hack/build-containerd.sh
set -euo pipefail

version="${CONTAINERD_VERSION:-v2.4.2}"
cache="${HAMI_CACHE_DIR:-$HOME/.cache/hami}"
out="$cache/containerd-$version"
binaries=(containerd containerd-shim-runc-v2 ctr)
have_all=1
for b in "${binaries[@]}"; do [[ -x "$out/$b" ]] || have_all=0; done
if (( have_all )) && "$out/containerd" --version 2>/dev/null | grep -q " $version "; then
  echo "$out"; exit 0
fi
command -v go >/dev/null || { echo "build-containerd: Go toolchain not found" >&2; exit 1; }

work="$cache/containerd-src-$version"
mkdir -p "$work" "$out"
cd "$work"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
[[ -f go.mod ]] || go mod init hami.local/containerdbuild >&2
cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
GO
go mod edit -require="github.com/containerd/containerd/v2@$version"
go mod tidy >&2
echo "build-containerd: compiling ${binaries[*]} $version (first time takes a few minutes)" >&2
pkg=github.com/containerd/containerd/v2/version
go build -p 2 -trimpath -tags no_btrfs \
  -ldflags="-s -w -X $pkg.Version=$version -X $pkg.Revision=hami-build -X $pkg.Package=github.com/containerd/containerd/v2" \
  -o "$out/" github.com/containerd/containerd/v2/cmd/containerd \
  github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/ctr >&2
echo "$out"
