"""Speculative decoding on the CPU proxy: tokens/s with drafts against without, per batch size.

    python benchmarks/speculate.py [--requests 64] [--batches 1,4,16,64]
                                   [--corrupt 0,25,50,75,100] [--new-tokens 32,96]
                                   [--layers 32] [--threads 1] [--rounds 1] [--json out.json]

The proxy model and the 64 requests are benchmarks/engine.py's (a DEEP TINY model: 32 layers,
hidden 64, vocabulary 1000; mixed tiers, shapes, queries; stop ids moved outside the
vocabulary so every request generates exactly its ``max_new_tokens``). First every request's
greedy answer is computed without speculation; each request's draft is then that answer as
token ids (``ChatRequest.draft`` takes ids as they are), with ``--corrupt`` percent of its
positions replaced by another token (chosen with a fixed seed), so acceptance is set by
construction: 0% is a perfect draft, 100% a draft that never matches (what is left to propose
is the sequence's own output, as on a page without a text layer).

For each batch size: ``off`` (``speculate="off"``: today's engine), then one run per
corruption level, all through ``DocModel.chat_batch(max_batch=N)``. Reported: tokens/s (all
generated tokens over the wall time of the whole run: vision, prefill, decode), its ratio to
``off`` at the same batch, tokens per CPU-second of this process (``time.process_time``, one
torch thread; the machine is shared and load distorts wall time more), the mean accepted
tokens per decode step of a sequence (accepted / (tokens - 1 - accepted): each step gives a
row 1 + its accepted tokens), and "same": requests whose tokens equal the ``off`` answer.
``--rounds`` > 1 runs every mode that many times, interleaved, and keeps each one's best.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from _results import cpu_model, run_info, save  # benchmarks/_results.py
from engine import MODEL, requests  # benchmarks/engine.py: the same proxy and requests

from ixcdoc.engine import ChatRequest
from ixcdoc.runtime import DocModel, load
from ixcdoc.tinyckpt import write_tiny_checkpoint

CORRUPT_SEED = 20


def corrupt(ids: Sequence[int], percent: int, vocab: int, rng: random.Random) -> list[int]:
    """``ids`` with ``percent`` % of its positions (rounded) replaced by a different token."""
    out = list(ids)
    n = round(len(out) * percent / 100)
    for i in rng.sample(range(len(out)), n):
        out[i] = (out[i] + rng.randrange(1, vocab)) % vocab
    return out


def speculation_table(
    dm: DocModel,
    reqs: list[ChatRequest],
    batches: Sequence[int],
    corruptions: Sequence[int],
    *,
    rounds: int = 1,
    sync: Callable[[], None] = lambda: None,
) -> list[dict]:
    """Rows of the table (module docstring) for ``reqs`` on ``dm``; prints it too."""
    base = [replace(r, speculate="off", draft=None) for r in reqs]
    ref = [a.token_ids for a in dm.chat_batch(base, max_batch=max(batches))]
    total = sum(len(t) for t in ref)
    vocab = dm.config.vocab_size
    drafted: dict[int, list[ChatRequest]] = {}
    for pct in corruptions:
        rng = random.Random(CORRUPT_SEED + pct)
        drafted[pct] = [
            replace(r, draft=corrupt(t, pct, vocab, rng), speculate="auto")
            for r, t in zip(reqs, ref, strict=True)
        ]
    modes: list[tuple[int, str, list[ChatRequest]]] = []
    for b in batches:
        modes.append((b, "off", base))
        modes += [(b, f"{pct}%", drafted[pct]) for pct in corruptions]
    best: dict[tuple[int, str], dict] = {}
    for _ in range(rounds):
        for b, name, rs in modes:
            sync()
            c0, t0 = time.process_time(), time.perf_counter()
            answers = dm.chat_batch(rs, max_batch=b)
            sync()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            accepted = sum(a.accepted_tokens for a in answers)
            steps = sum(len(a.token_ids) - 1 - a.accepted_tokens for a in answers)
            same = sum(a.token_ids == t for a, t in zip(answers, ref, strict=True))
            row = best.get((b, name))
            if row is None or wall < row["wall_s"]:
                best[(b, name)] = {
                    "batch": b,
                    "draft": name,
                    "tokens": total,
                    "wall_s": round(wall, 3),
                    "cpu_s": round(cpu, 3),
                    "accepted": accepted,
                    "accepted_per_step": round(accepted / max(steps, 1), 2),
                    "same": same,
                }
    rows = list(best.values())
    print(
        f"{'batch':>5} {'draft':>6} {'wall s':>8} {'tokens/s':>9} {'vs off':>7} "
        f"{'tok/cpu-s':>9} {'vs off':>7} {'acc/step':>8} same"
    )
    for r in rows:
        off = best[(r["batch"], "off")]
        r["tokens_per_s"] = round(r["tokens"] / r["wall_s"], 1)
        r["tokens_per_cpu_s"] = round(r["tokens"] / r["cpu_s"], 1)
        r["speedup"] = round(off["wall_s"] / r["wall_s"], 2)
        r["speedup_cpu"] = round(off["cpu_s"] / r["cpu_s"], 2)
        print(
            f"{r['batch']:>5} {r['draft']:>6} {r['wall_s']:>8.2f} {r['tokens_per_s']:>9.1f} "
            f"{r['speedup']:>6.2f}x {r['tokens_per_cpu_s']:>9.1f} {r['speedup_cpu']:>6.2f}x "
            f"{r['accepted_per_step']:>8.2f} {r['same']}/{len(reqs)}"
        )
    return rows


def main() -> None:
    """Build the proxy, run the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--corrupt", default="0,25,50,75,100", help="percent of draft positions")
    ap.add_argument("--new-tokens", default="32,96", help="lo,hi answer lengths")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds; best one kept")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "speculate.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lo, hi = (int(x) for x in args.new_tokens.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_checkpoint(Path(tmp) / "deep", layers=args.layers, **MODEL)
        dm = load(path, device="cpu")
    dm.tokenizer.stop_ids = (10**9,)  # never produced: every request runs to max_new_tokens
    reqs = requests(args.requests, lo, hi)
    dm.chat(reqs[0].images, reqs[0].query, hd=reqs[0].hd, max_new_tokens=2)  # warm-up
    load_before = os.getloadavg()
    print(
        f"{args.requests} requests, {args.layers} layers, {args.threads} thread(s), "
        f"{cpu_model()}, best of {args.rounds} round(s)"
    )
    rows = speculation_table(
        dm,
        reqs,
        [int(b) for b in args.batches.split(",")],
        [int(c) for c in args.corrupt.split(",")],
        rounds=args.rounds,
    )
    print(f"load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")
    out = {
        **run_info(),
        "args": vars(args),
        "model": {**MODEL, "layers": args.layers},
        "loadavg": [load_before[0], os.getloadavg()[0]],
        "rows": rows,
    }
    save(args.json, out)


if __name__ == "__main__":
    main()
