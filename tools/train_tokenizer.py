#!/usr/bin/env python3
"""Train kvtier's byte-level BPE tokenizers with Hugging Face `tokenizers`.

Run once, on a machine that has the `tokenizers` package (the GPU machine
does); the outputs are committed, and C code never runs Python:

  code.tokenizer.json   16384-token BPE trained on source code (Python
                        library files and C headers of the machine that ran
                        it), with the Llama 3 style pre-tokenizer (a Split
                        regex + ByteLevel) and FIM special tokens.  `kvtier
                        model init` embeds it, so token counts are realistic.
  gpt2.tokenizer.json   a 1024-token BPE with GPT-2's ByteLevel regex
  digits.tokenizer.json a 1024-token BPE with a Split + Digits + ByteLevel
                        sequence (DeepSeek-Coder style) and merges as pairs
                        The two small ones exist only to test the C
                        tokenizer against other pre-tokenizer shapes.

usage: train_tokenizer.py OUTDIR [CORPUS_DIR ...]
"""
import glob
import json
import os
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
DEEPSEEK_SPLIT = r"[\r\n]|\s?\p{L}+|\s?\p{P}+|[^\p{L}\p{P}\s]+|\s+"
SPECIAL = ["<|endoftext|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>"]


def corpus_files(dirs, limit_bytes):
    out, total = [], 0
    for d in dirs:
        for pat in ("**/*.py", "**/*.h", "**/*.c"):
            for f in sorted(glob.glob(os.path.join(d, pat), recursive=True)):
                try:
                    size = os.path.getsize(f)
                    with open(f, encoding="utf-8") as fh:
                        fh.read(1)
                except (OSError, UnicodeDecodeError):
                    continue
                if size == 0 or size > 512 * 1024:
                    continue
                out.append(f)
                total += size
                if total >= limit_bytes:
                    return out
    return out


def train(files, vocab, pre, special, path, merges_as_pairs=False):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train(files, trainer)
    tok.save(path, pretty=False)
    if not merges_as_pairs:  # older files: merges as "a b" strings
        with open(path, encoding="utf-8") as fh:
            doc = json.load(fh)
        merges = doc["model"]["merges"]
        if merges and isinstance(merges[0], list):
            doc["model"]["merges"] = [" ".join(m) for m in merges]
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, ensure_ascii=False, separators=(",", ":"))
    print(f"{path}: vocab {tok.get_vocab_size()}, {os.path.getsize(path)} bytes")


def main():
    outdir = sys.argv[1]
    dirs = sys.argv[2:] or ["/usr/lib/python3", "/usr/include"]
    dirs = [d for d in dirs if os.path.isdir(d)]
    os.makedirs(outdir, exist_ok=True)
    files = corpus_files(dirs, 96 << 20)
    print(f"corpus: {len(files)} files from {dirs}")
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    split = pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(LLAMA3_SPLIT),
                                 behavior="isolated", invert=False)
    train(files, 16384, pre_tokenizers.Sequence([split, byte_level]), SPECIAL,
          os.path.join(outdir, "code.tokenizer.json"))
    small = files[: max(1, len(files) // 20)]
    train(small, 1024, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
          ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>"],
          os.path.join(outdir, "gpt2.tokenizer.json"))
    ds_split = pre_tokenizers.Split(pattern=__import__("tokenizers").Regex(DEEPSEEK_SPLIT),
                                    behavior="isolated", invert=False)
    train(small, 1024,
          pre_tokenizers.Sequence([ds_split, pre_tokenizers.Digits(individual_digits=True),
                                   byte_level]),
          ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜fim▁hole｜>",
           "<｜fim▁begin｜>", "<｜fim▁end｜>"],
          os.path.join(outdir, "digits.tokenizer.json"), merges_as_pairs=True)


if __name__ == "__main__":
    main()
