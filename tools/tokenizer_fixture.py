#!/usr/bin/env python3
"""Expected token ids of the tokenizer fixtures, computed by Hugging Face
`tokenizers`, so that CI checks the C tokenizer without Python.

For every tokenizer.json given and every file in SAMPLES, records
`tok.encode(text, add_special_tokens=False).ids` (added tokens in the text
are split out, as Hugging Face does by default), keyed by file names.

usage: tokenizer_fixture.py SAMPLES TOKENIZER.json... > expected_ids.json
  (as run: tools/tokenizer_fixture.py tests/fixtures/tokenizer/samples
   engine/assets/code.tokenizer.json tests/fixtures/tokenizer/*.tokenizer.json)
"""
import glob
import json
import os
import sys

from tokenizers import Tokenizer


def main():
    samples = sorted(glob.glob(os.path.join(sys.argv[1], "*")))
    out = {}
    for tj in sys.argv[2:]:
        tok = Tokenizer.from_file(tj)
        per = {}
        for s in samples:
            with open(s, encoding="utf-8") as fh:
                text = fh.read()
            ids = tok.encode(text, add_special_tokens=False).ids
            assert tok.decode(ids, skip_special_tokens=False) == text, s
            per[os.path.basename(s)] = ids
        out[os.path.basename(tj)] = per
    json.dump(out, sys.stdout, separators=(",", ":"))
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
