#!/usr/bin/env bash
# Make tests/fixtures/oracle/<preset>.{json,logits.f32,model.json} on the GPU
# machine (it has torch + transformers; run on its CPU in float32): build
# kvtier from the source tarball, write each preset's random-weight model
# with `kvtier model init`, and record Hugging Face's logits for the fixed
# prompts.  usage (there): tools/make_oracle_fixtures.sh OUTDIR
set -euo pipefail
out=$1
. tools/device_env.sh
cmake -S . -B /tmp/kvt-build -DKVT_FUZZ=OFF -DKVT_WERROR=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
make -C /tmp/kvt-build -j"$(nproc)" kvtier >/dev/null
bin=/tmp/kvt-build/cli/kvtier
while read -r preset dtype prompts; do
  dir=/tmp/oracle-models/$preset
  rm -rf "$dir"
  /usr/bin/time -f "$preset init %e s" "$bin" model init --preset "$preset" --out "$dir" \
    --seed 1 --dtype "$dtype" --json >"$out/$preset.model.json"
  /usr/bin/time -f "$preset oracle %e s" python3 tools/hf_oracle.py "$dir" "$out/$preset" \
    "tests/fixtures/oracle/$prompts"
done <<'LIST'
tiny f32 prompts.json
tiny-qwen2 f32 prompts.json
llama-3.2-1b bf16 prompts_1b.json
LIST
