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

MODEL=$DATA/models/small
if [ ! -f "$MODEL/config.json" ]; then
  step "kvtier model init --preset small --out $MODEL (random weights, real code tokenizer)"
  "$KVTIER" model init --preset small --out "$MODEL" --seed 1
fi

# Two rounds of an infilling session on this very script: round 2's user
# typed more after the cursor, and EFIM reuses every stored block up to MID.
GEN=$DATA/generate
rm -rf "$GEN"
PREFIX=$(head -c 1500 "$0")
SUFFIX=$(tail -c +1501 "$0" | head -c 1500)
for typed in "" "step \"more\""; do
  step "kvtier generate --format efim --data $GEN (typed after the cursor: '${typed}')"
  "$KVTIER" generate --model "$MODEL" --data "$GEN" --prompt "$PREFIX$typed" --anchor "$PREFIX" \
    --suffix "$SUFFIX" --max-tokens 16 --json
done

step "kvtier bench engine --model $MODEL"
"$KVTIER" bench engine --model "$MODEL"

step "done"
echo "machine-readable: $KVTIER bench kv --data $DATA --json"
echo "remove the demo data with: rm -rf $NODE $GEN"
