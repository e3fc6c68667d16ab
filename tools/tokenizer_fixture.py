#!/usr/bin/env python3
"""Expected token ids of the tokenizer fixtures, computed by Hugging Face
`tokenizers`, so that CI checks the C tokenizer without Python.

For every *.tokenizer.json in DIR and every file in DIR/samples, records
`tok.encode(text, add_special_tokens=False).ids` (added tokens in the text
are split out, as Hugging Face does by default).

usage: tokenizer_fixture.py DIR > DIR/expected_ids.json
"""
import glob
import json
import os
import sys

from tokenizers import Tokenizer


def main():
    d = sys.argv[1]
    samples = sorted(glob.glob(os.path.join(d, "samples", "*")))
    out = {}
    for tj in sorted(glob.glob(os.path.join(d, "*.tokenizer.json"))):
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
