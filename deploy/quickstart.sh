#!/usr/bin/env bash
# kvtier quickstart on a fresh Debian 12 machine: install the dependencies,
# build into build/ (Release), then show the storage tier working end to
# end -- benchmark T1 (host pool) and T2 (RocksDB) on this disk, keep the
# tier the benchmark wrote, and inspect it with `kv stats`, `kv verify` and
# `kv ls`.  About a minute on 2 cores once the packages are installed.
#
# Environment: KVT_DATA    data directory (default: <repo>/data)
#              KVT_BLOCKS  blocks in the benchmark chain (default 256)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DATA=${KVT_DATA:-$ROOT/data}
BLOCKS=${KVT_BLOCKS:-256}
# These are flags too (KVT_<FLAG>); pass them explicitly instead.
unset KVT_DATA KVT_BLOCKS

step() { printf '\n==> %s\n' "$*"; }

step "installing dependencies (deploy/install-deps.sh)"
./deploy/install-deps.sh

step "building into build/ (Release)"
cmake -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target kvtier
KVTIER=$ROOT/build/cli/kvtier
"$KVTIER" version

step "benchmark: $BLOCKS blocks of 1 MiB through T1 and T2, data in $DATA"
mkdir -p "$DATA"
"$KVTIER" bench kv --data "$DATA" --block-bytes 1M --blocks "$BLOCKS" --keep

# The benchmark's scratch space is a node-shaped data dir: tier at $DATA/bench/t2.
NODE=$DATA/bench
step "kvtier kv stats --data $NODE"
"$KVTIER" kv stats --data "$NODE"

step "kvtier kv verify --data $NODE"
"$KVTIER" kv verify --data "$NODE"

step "kvtier kv ls --data $NODE --limit 4"
"$KVTIER" kv ls --data "$NODE" --limit 4

step "done"
echo "machine-readable: $KVTIER bench kv --data $DATA --json"
echo "remove the demo data with: rm -rf $NODE"
