#!/usr/bin/env python3
"""A scripted infilling session against a running `kvtier serve` / coord
(standard library only): ROUNDS rounds on FILE, the cursor in the middle of
the file's first half, the suffix the second half, the user typing a few
more bytes each round.  Prints one JSON line per round (format, round,
prompt/cached tokens, latency, text) -- used on the GPU machine, which has
no jq.  usage: serve_session.py URL MODEL FILE [ROUNDS] [FORMAT] [MAX_TOKENS]"""
import json, sys, time, urllib.request

url, model, path = sys.argv[1], sys.argv[2], sys.argv[3]
rounds = int(sys.argv[4]) if len(sys.argv) > 4 else 5
fmt = sys.argv[5] if len(sys.argv) > 5 else "efim"
max_tokens = int(sys.argv[6]) if len(sys.argv) > 6 else 32
text = open(path, encoding="utf-8", errors="replace").read()
half = len(text) // 2
cursor = half // 2
for r in range(rounds):
    body = {"model": model, "prompt": text[:cursor + 48 * r], "suffix": text[half:],
            "max_tokens": max_tokens, "temperature": 0, "kvtier": {"format": fmt}}
    req = urllib.request.Request(url + "/v1/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0 = time.time()
    with urllib.request.urlopen(req, timeout=300) as resp:
        ans = json.load(resp)
    ms = (time.time() - t0) * 1000
    u = ans["usage"]
    print(json.dumps({"format": fmt, "round": r + 1, "prompt_tokens": u["prompt_tokens"],
                      "cached_tokens": u["prompt_tokens_details"]["cached_tokens"],
                      "latency_ms": round(ms, 1), "text": ans["choices"][0]["text"][:60]}))
