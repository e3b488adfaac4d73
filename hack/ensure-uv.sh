#!/usr/bin/env bash
# Installs the pinned uv (hack/uv-requirements.txt, hash-checked) once into ~/.cache/hami and
# prints the path of its binary. Every Makefile target installs Python packages through it,
# from uv.lock only.
#
#   hack/ensure-uv.sh   -> ~/.cache/hami/uv-<version>/bin/uv
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
reqs="$root/hack/uv-requirements.txt"
version="$(sed -n 's/^uv==\([^ ]*\).*/\1/p' "$reqs")"
cache="${HAMI_CACHE_DIR:-$HOME/.cache/hami}"
dir="$cache/uv-$version"
if [[ -x "$dir/bin/uv" ]] && "$dir/bin/uv" --version 2>/dev/null | grep -q "^uv $version\b"; then
  echo "$dir/bin/uv"; exit 0
fi
python="${PYTHON:-python3}"
echo "ensure-uv: installing uv $version into $dir" >&2
rm -rf "$dir"
"$python" -m venv "$dir" >&2
"$dir/bin/pip" install -q --require-hashes --no-deps --only-binary=:all: -r "$reqs" >&2
echo "$dir/bin/uv"
