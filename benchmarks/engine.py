"""Batched engine vs the batch-1 chat loop on CPU: wall-clock tokens/s at batch 1, 4, 16, 64.

    python benchmarks/engine.py [--requests 64] [--batches 1,4,16,64] [--new-tokens 16,48]
                                [--layers 32] [--threads 1] [--json out.json]

A DEEP TINY model (32 layers, hidden 64, 8 heads, 2 KV heads, MLP 128, vocabulary 1000, tile
56) is written in the official layout and loaded through the real loader. At this width a
step's arithmetic is tiny, so time is almost all host work per forward (Python, op dispatch),
which is what dominates decoding on a fast GPU: the proxy for "one decode step costs about the
same for 1 or 32 sequences". 64 requests with mixed tiers (HD1..HD9), page shapes, query
lengths and answer lengths (``--new-tokens`` lo,hi) run:

- ``chat loop``: ``DocModel.chat`` once per request (today's page-by-page path);
- ``engine bN``: ``DocModel.chat_batch(requests, max_batch=N)``.

The stop ids are moved outside the vocabulary so every request generates exactly its
``max_new_tokens`` in every mode; the script checks that every mode gives each request the same
tokens as the chat loop. tokens/s = all generated tokens / wall time of the whole run (vision,
prefill and decode). Prints a table, writes JSON (default benchmarks/results/engine.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ixcdoc.engine import ChatRequest
from ixcdoc.runtime import load
from ixcdoc.tinyckpt import write_tiny_checkpoint

MODEL = {
    "hidden": 64,
    "heads": 8,
    "kv_heads": 2,
    "intermediate": 128,
    "tokenizer_vocab": 1000,
    "tile": 56,
}
SHAPES = [(40, 30), (300, 900), (120, 60), (64, 200), (90, 90), (200, 120)]
QUERIES = ["Transcribe.", "What is the total?", "Summarize this page in a few sentences, please."]


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def requests(n: int, lo: int, hi: int) -> list[ChatRequest]:
    """n requests with mixed tiers, shapes, queries and answer lengths (deterministic)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        w, h = SHAPES[i % len(SHAPES)]
        img = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        out.append(
            ChatRequest(
                [img],
                QUERIES[i % len(QUERIES)],
                hd=(1, 2, 4, 9)[i % 4],
                max_new_tokens=int(rng.integers(lo, hi + 1)),
            )
        )
    return out


def main() -> None:
    """Run every mode once, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--new-tokens", default="16,48", help="lo,hi answer lengths")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "engine.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lo, hi = (int(x) for x in args.new_tokens.split(","))
    batches = [int(b) for b in args.batches.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_checkpoint(Path(tmp) / "deep", layers=args.layers, **MODEL)
        dm = load(path, device="cpu")
    dm.tokenizer.stop_ids = (10**9,)  # never produced: every request runs to max_new_tokens
    reqs = requests(args.requests, lo, hi)
    total = sum(r.max_new_tokens for r in reqs)

    dm.chat(reqs[0].images, reqs[0].query, hd=reqs[0].hd, max_new_tokens=2)  # warm-up
    rows = []
    t0 = time.perf_counter()
    ref = [
        dm.chat(r.images, r.query, hd=r.hd, max_new_tokens=r.max_new_tokens).token_ids for r in reqs
    ]
    wall = time.perf_counter() - t0
    rows.append({"mode": "chat loop", "batch": 1, "wall_s": wall, "tokens": total, "same": True})
    for b in batches:
        t0 = time.perf_counter()
        answers = dm.chat_batch(reqs, max_batch=b)
        wall = time.perf_counter() - t0
        same = all(a.token_ids == t for a, t in zip(answers, ref, strict=True))
        rows.append(
            {"mode": f"engine b{b}", "batch": b, "wall_s": wall, "tokens": total, "same": same}
        )
    base = rows[0]["tokens"] / rows[0]["wall_s"]
    print(
        f"{args.requests} requests, {total} tokens, {args.layers} layers, "
        f"{args.threads} thread(s), {cpu_model()}"
    )
    print(f"{'mode':<12} {'batch':>5} {'wall s':>8} {'tokens/s':>9} {'vs chat':>8} same")
    for r in rows:
        r["tokens_per_s"] = r["tokens"] / r["wall_s"]
        r["speedup"] = r["tokens_per_s"] / base
        print(
            f"{r['mode']:<12} {r['batch']:>5} {r['wall_s']:>8.2f} {r['tokens_per_s']:>9.1f} "
            f"{r['speedup']:>7.2f}x {r['same']}"
        )
    out = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "args": vars(args),
        "model": {**MODEL, "layers": args.layers},
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.json}")
    if not all(r["same"] for r in rows):
        raise SystemExit("a mode gave different tokens than the chat loop")


if __name__ == "__main__":
    main()
