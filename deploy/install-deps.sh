#!/usr/bin/env bash
# Install the Debian 12 packages kvtier builds and tests against
# (DESIGN.md section 6).  Idempotent: when every package is already
# installed it prints nothing and changes nothing; otherwise it runs
# apt-get update once and installs only the missing ones.  Uses sudo only
# when not root; needs no terminal (DEBIAN_FRONTEND=noninteractive).
set -euo pipefail

PACKAGES=(
  build-essential cmake pkg-config
  libucx-dev librocksdb-dev libprotobuf-c-dev protobuf-c-compiler
  libssl-dev libxxhash-dev libpcre2-dev libmicrohttpd-dev libcjson-dev
  libcmocka-dev clang libclang-rt-14-dev
  ucx-utils redis-server  # the same-run references of `kvtier bench pull`
  curl jq                 # the quickstart's client of `kvtier serve`
)

missing=()
for p in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = "installed" ] || missing+=("$p")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=(sudo)
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q </dev/null
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
  "${missing[@]}" </dev/null
