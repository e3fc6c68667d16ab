#!/usr/bin/env bash
# kvtier quickstart on a fresh Debian 12 machine: install the dependencies,
# build into build/ (Release), show the storage tier (T1/T2 benchmark, then
# `kv stats` / `kv verify` on what it wrote), then run the embedded default
# -- `kvtier serve`: the OpenAI-compatible coordinator, a prefill node and a
# decode node in one process -- and a scripted four-round infilling session
# against it in which `cached_tokens` grows round after round (EFIM), then
# the same session in FIM for contrast.  A few minutes on 2 cores once the
# packages are installed (the first run also writes a random-weight
# `small` model into the data directory).
#
# Environment: KVT_DATA    data directory (default: <repo>/data)
#              KVT_BLOCKS  blocks in the tier benchmark (default 128)
#              KVT_PORT    HTTP port of the server (default 8000)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
DATA=${KVT_DATA:-$ROOT/data}
BLOCKS=${KVT_BLOCKS:-128}
PORT=${KVT_PORT:-8000}
# These are flags too (KVT_<FLAG>); pass them explicitly instead.
unset KVT_DATA KVT_BLOCKS KVT_PORT

step() { printf '\n==> %s\n' "$*"; }

step "installing dependencies (deploy/install-deps.sh)"
./deploy/install-deps.sh

step "building into build/ (Release)"
cmake -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" --target kvtier
KVTIER=$ROOT/build/cli/kvtier
"$KVTIER" version

step "the tier: $BLOCKS blocks of 1 MiB through T1 and T2, data in $DATA"
mkdir -p "$DATA"
"$KVTIER" bench kv --data "$DATA" --block-bytes 1M --blocks "$BLOCKS" --keep
"$KVTIER" kv stats --data "$DATA/bench"
"$KVTIER" kv verify --data "$DATA/bench"

SERVE=$DATA/serve
URL=http://127.0.0.1:$PORT
step "kvtier serve --data $SERVE --http 127.0.0.1:$PORT (coordinator + prefill + decode)"
"$KVTIER" serve --data "$SERVE" --http "127.0.0.1:$PORT" --log-level warn &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 240); do
  curl -sf "$URL/readyz" >/dev/null 2>&1 && break
  kill -0 $SERVER 2>/dev/null || { echo "the server exited" >&2; exit 1; }
  sleep 0.5
done
curl -sf "$URL/readyz" >/dev/null || { echo "the server did not become ready" >&2; exit 1; }
curl -s "$URL/v1/models"; echo

# An infilling session on this very script: the cursor sits after the
# first 1500 bytes, the suffix is the next 1500, and each round the user
# has typed a little more.  Prints what the OpenAI API answers.
PREFIX=$(head -c 1500 "$0")
SUFFIX_EFIM=$(tail -c +1501 "$0" | head -c 1500)
SUFFIX_FIM=$(tail -c +3001 "$0" | head -c 1500) # another file position: no EFIM blocks to borrow
TYPED=('' 'step' 'step "more' 'step "more rounds"')
session() { # $1 = efim | fim, $2 = suffix
  for i in 0 1 2 3; do
    body=$(jq -n --arg p "$PREFIX${TYPED[$i]}" --arg s "$2" --arg f "$1" \
      '{model: "small", prompt: $p, suffix: $s, max_tokens: 16, temperature: 0,
        kvtier: {format: $f}}')
    t0=$(date +%s%N)
    answer=$(curl -s "$URL/v1/completions" -H 'Content-Type: application/json' -d "$body")
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    echo "$answer" | jq -r --arg r "$((i + 1))" --arg f "$1" --arg ms "$ms" \
      '"\($f) round \($r): prompt_tokens=\(.usage.prompt_tokens) cached_tokens=\(.usage.prompt_tokens_details.cached_tokens) latency_ms=\($ms) text=\(.choices[0].text | @json)"'
  done
}
step "EFIM session: everything up to MID is reused from round 2 on"
session efim "$SUFFIX_EFIM"
step "the same session in FIM: only the prefix part is reused"
session fim "$SUFFIX_FIM"

step "done"
echo "the server's metrics:"
curl -s "$URL/metrics" | grep -E '^kvtier_(requests|cached_tokens|prompt_tokens)_total'
echo "the same API by hand: $KVTIER serve --data $SERVE, then POST $URL/v1/completions"
echo "remove the demo data with: rm -rf $DATA/bench $SERVE"
