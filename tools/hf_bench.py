#!/usr/bin/env python3
"""Hugging Face transformers reference for `kvtier bench engine --device cuda:N`.

Runs the same model directory with transformers (bf16 weights, PyTorch SDPA
attention) on the same GPU and prints one line per figure, each
"hf " + a JSON object, for the bench to read:

    hf {"kind": "prefill", "n": 512, "cached": 0, "tok_s": ...}
    hf {"kind": "prefill", "n": 512, "cached": 512, "tok_s": ...}
    hf {"kind": "decode", "batch": 16, "context": 512, "tok_s": ...}

Prefill: a forward of n random tokens (only the last position's logits
computed, logits_to_keep=1), fresh or on top of a KV cache of n earlier
tokens; the median of --rounds.  Decode: --batch sequences of --context
tokens, then --steps greedy steps of one token each (logits of every row,
argmax on the GPU), timed after two warm-up steps.  This is transformers'
eager forward (DynamicCache, no CUDA graphs, no torch.compile): on a
virtualised host its decode step is bound by Python and kernel launches
(an "info decode" line gives single steps), which is what users of a plain
transformers loop get.  Times are wall clock
around whole forward calls with torch.cuda.synchronize() on both sides,
like the bench times the engine's calls.

Exit status 0 when it ran, 3 (with a "skip REASON" line) when torch,
transformers or a GPU is missing, 1 on any other failure.
"""
import argparse
import json
import statistics
import sys
import time


def emit(obj):
    print("hf " + json.dumps(obj), flush=True)


def skip(reason):
    print("skip " + reason, flush=True)
    return 3


def ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--prefill", default="512,2048,8192")
    ap.add_argument("--batches", default="1,16,64")
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    try:
        import torch
        import transformers
    except Exception as e:  # noqa: BLE001 - any import failure means "absent"
        return skip("python3 lacks torch or transformers: %s" % e)
    if not torch.cuda.is_available() or torch.cuda.device_count() <= args.device:
        return skip("torch sees no cuda:%d" % args.device)
    dev = "cuda:%d" % args.device
    torch.cuda.set_device(dev)
    kw = dict(attn_implementation="sdpa")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            args.model, dtype=torch.bfloat16, **kw)
    except TypeError:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            args.model, torch_dtype=torch.bfloat16, **kw)
    model = model.to(dev).eval()
    cfg = model.config
    vocab, max_pos = cfg.vocab_size, cfg.max_position_embeddings
    gen = torch.Generator(device="cpu").manual_seed(0)
    print("info transformers %s torch %s attn %s" % (
        transformers.__version__, torch.__version__,
        getattr(cfg, "_attn_implementation", "?")), flush=True)

    def ids(b, n):
        return torch.randint(0, vocab, (b, n), generator=gen).to(dev)

    def fwd(x, cache=None):
        # logits of the last position only (a decode step has one anyway)
        return model(input_ids=x, past_key_values=cache, use_cache=True, logits_to_keep=1)

    def timed(fn):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0, r

    with torch.inference_mode():
        fwd(ids(1, 64))  # warm-up: kernels, cuBLAS handles
        for n in ints(args.prefill):
            if n + 1 > max_pos:
                print("info prefill %d skipped: max_position_embeddings %d" % (n, max_pos))
                continue
            secs = [timed(lambda: fwd(ids(1, n)))[0] for _ in range(args.rounds)]
            emit({"kind": "prefill", "n": n, "cached": 0,
                  "tok_s": n / statistics.median(secs)})
            if 2 * n > max_pos:
                continue
            cache = fwd(ids(1, n)).past_key_values
            secs = []
            for _ in range(args.rounds):
                x = ids(1, n)
                secs.append(timed(lambda: fwd(x, cache))[0])
                if hasattr(cache, "crop"):
                    cache.crop(-n)  # drop the n tokens just added
                else:
                    cache = fwd(ids(1, n)).past_key_values
            emit({"kind": "prefill", "n": n, "cached": n,
                  "tok_s": n / statistics.median(secs)})
            del cache
            torch.cuda.empty_cache()
        ctx = args.context
        for b in ints(args.batches):
            if ctx + args.steps + 3 > max_pos:
                continue
            out = fwd(ids(b, ctx))
            cache = out.past_key_values
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            for _ in range(2):
                out = fwd(nxt, cache)
                nxt = out.logits[:, -1].argmax(-1, keepdim=True)

            def steps():
                tok = nxt
                for _ in range(args.steps):
                    o = fwd(tok, cache)
                    tok = o.logits[:, -1].argmax(-1, keepdim=True)
                return tok

            sec, _ = timed(steps)
            emit({"kind": "decode", "batch": b, "context": ctx,
                  "tok_s": b * args.steps / sec})
            # A few steps timed one by one, for the log.
            each = [timed(lambda: fwd(nxt, cache))[0] * 1e3 for _ in range(4)]
            print("info decode batch %d: steps of %s ms" % (
                b, ", ".join("%.2f" % t for t in each)), flush=True)
            del cache, out
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001 - report, exit 1
        print("error %s: %s" % (type(e).__name__, e), flush=True)
        sys.exit(1)
