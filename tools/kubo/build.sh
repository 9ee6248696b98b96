#!/usr/bin/env bash
# Put a kubo `ipfs` binary at $1 (default build/bin/ipfs): an installed kubo when one is on PATH,
# else the kubo release pinned in tools/kubo/go.mod, built once with the Go toolchain and cached in
# ${LLM_MESH_CACHE:-~/.cache/llm-mesh}/kubo-<version>/ipfs for later runs and fresh clones.
# LLM_MESH_KUBO_BUILD=1 ignores an installed kubo and uses the pinned build.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${1:-$root/build/bin/ipfs}"
mkdir -p "$(dirname "$target")"
# Absolute, so that our own link on PATH (the Makefile puts build/bin there) is recognised below.
target_dir="$(cd "$(dirname "$target")" && pwd -P)"
target="$target_dir/$(basename "$target")"
version="$(awk '$1 == "github.com/ipfs/kubo" {print $2}' "$here/go.mod")"
cache="${LLM_MESH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/llm-mesh}/kubo-$version"

is_kubo() { "$1" version 2>/dev/null | grep -q '^ipfs version '; }

# 1. An installed kubo (not our own link, which would become a link to itself) is used as is.
if [ "${LLM_MESH_KUBO_BUILD:-0}" != 1 ]; then
  installed=""
  IFS=: read -ra dirs <<<"$PATH"
  for dir in "${dirs[@]}"; do
    [ -n "$dir" ] && [ -x "$dir/ipfs" ] && [ "$(cd "$dir" && pwd -P)" != "$target_dir" ] || continue
    installed="$dir/ipfs"
    break
  done
  if [ -n "$installed" ] && is_kubo "$installed"; then
    ln -sfn "$installed" "$target"
    is_kubo "$target" || { echo "kubo: $target does not run after linking it to $installed" >&2; exit 1; }
    echo "kubo: using installed $installed ($("$installed" version))"
    exit 0
  fi
fi

# 2. The pinned build, from the cache or built now.
if ! is_kubo "$cache/ipfs"; then
  go="$(command -v go || true)"
  [ -z "$go" ] && [ -x /usr/local/go/bin/go ] && go=/usr/local/go/bin/go
  if [ -z "$go" ]; then
    echo "kubo: no ipfs on PATH and no Go toolchain to build kubo $version:" \
      "install Go >= 1.25 (https://go.dev/dl) or kubo (https://docs.ipfs.tech/install/)" >&2
    exit 1
  fi
  echo "kubo: building $version with $("$go" version) (several minutes on a fresh module cache)"
  start=$(date +%s)
  mkdir -p "$cache"
  (cd "$here" && GOFLAGS=-mod=readonly GOTOOLCHAIN=local "$go" build -trimpath -o "$cache/ipfs.tmp" \
    github.com/ipfs/kubo/cmd/ipfs)
  mv -f "$cache/ipfs.tmp" "$cache/ipfs"
  echo "kubo: built $cache/ipfs in $(( $(date +%s) - start ))s"
fi
ln -sfn "$cache/ipfs" "$target"
is_kubo "$target" || { echo "kubo: $target does not run after linking it to $cache/ipfs" >&2; exit 1; }
echo "kubo: $target -> $cache/ipfs ($("$target" version))"
