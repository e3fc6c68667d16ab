#!/usr/bin/env python3
"""Reference logits from Hugging Face transformers for a model directory.

Run on a machine with torch + transformers (the GPU machine; CPU is used,
in float32, eager attention, so the figures do not depend on GPU kernels).
Writes, for each prompt (a list of token ids), the logits of every position
at a fixed subset of vocabulary ids (every id_stride-th id, about 512 of
them) and, for the first prompt, the full logits of its last position, so
that CI checks the C engine without Python:

  OUT.json        {"model_dir", "transformers", "torch", "vocab_size",
                   "id_stride", "prompts": [{"ids": [...], "argmax": [...]}]}
  OUT.logits.f32  little-endian float32: for each prompt [n][ceil(vocab/stride)],
                  then [vocab] (the last position of the first prompt)

usage: hf_oracle.py MODEL_DIR OUT_PREFIX IDS_JSON
  IDS_JSON: a JSON list of prompts, each a list of token ids
"""
import json
import struct
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM

SUBSET = 512


def main():
    model_dir, out, ids_path = sys.argv[1], sys.argv[2], sys.argv[3]
    prompts = json.load(open(ids_path))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation="eager")
    model.eval()
    vocab = model.config.vocab_size
    stride = (vocab + SUBSET - 1) // SUBSET
    meta = {"model_dir": model_dir, "transformers": transformers.__version__,
            "torch": torch.__version__, "vocab_size": vocab, "id_stride": stride,
            "prompts": []}
    with open(out + ".logits.f32", "wb") as fh, torch.no_grad():
        last = None
        for ids in prompts:
            logits = model(torch.tensor([ids])).logits[0].float()
            sub = logits[:, ::stride].contiguous().numpy().astype("<f4")
            fh.write(sub.tobytes())
            if last is None:
                last = logits[-1].contiguous().numpy().astype("<f4").tobytes()
            meta["prompts"].append({"ids": ids,
                                    "argmax": [int(i) for i in logits.argmax(-1)]})
        fh.write(last)
    json.dump(meta, open(out + ".json", "w"), separators=(",", ":"))
    print(f"{out}: {len(prompts)} prompts, vocab {vocab}")


if __name__ == "__main__":
    main()
