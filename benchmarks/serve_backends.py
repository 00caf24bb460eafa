"""The server's two backends on CPU: the one-at-a-time ``Backend`` (``chat`` per request) vs a
one-slot ``EngineBackend`` (the batched engine with one slot), same requests, same model.

    python benchmarks/serve_backends.py [--requests 8] [--layers 32] [--rounds 3]
                                        [--new-tokens 16,48] [--threads 1] [--json out.json]

The question it answers: does a one-slot engine give ``--batch-size 1``'s answers at its speed
(then ``Backend`` could go)? A DEEP TINY model (benchmarks/engine.py's: 32 layers, hidden 64)
is written in the official layout and loaded through the real loader; the stop ids are moved
outside the vocabulary so every request runs to its ``max_new_tokens``. ``--requests`` requests
with mixed tiers (HD1..HD9), page shapes, queries and answer lengths are submitted at once to
each backend (they queue: one runs at a time in both) and timed until the last one finishes.
The backends run interleaved for ``--rounds`` rounds; each keeps its best wall time. "same"
counts the requests whose tokens equal ``Backend``'s. Prints a table, writes JSON (default
benchmarks/results/serve_backends.json).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
from _results import run_info, save  # benchmarks/_results.py
from engine import MODEL, requests  # benchmarks/engine.py: the script's folder is on sys.path

from ixcdoc.runtime import load
from ixcdoc.serve.backend import Backend
from ixcdoc.serve.engine_backend import EngineBackend
from ixcdoc.sizing import served_positions
from ixcdoc.tinyckpt import write_tiny_checkpoint


def run_all(backend: object, reqs: list) -> tuple[float, float, list[list[int]]]:
    """Submit every request, wait for all: (wall s, CPU s of this process, tokens per request)."""
    done = threading.Semaphore(0)
    out: list = [None] * len(reqs)

    def finished(i: int):
        def on_done(answer, error) -> None:
            out[i] = error if error is not None else answer.token_ids
            done.release()

        return on_done

    t0, c0 = time.perf_counter(), time.process_time()
    for i, r in enumerate(reqs):
        backend.submit(r, lambda _: True, finished(i))
    for _ in reqs:
        done.acquire()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    for o in out:
        if isinstance(o, BaseException):
            raise o
    return wall, cpu, out


def main() -> None:
    """Time both backends, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--new-tokens", default="16,48", help="lo,hi answer lengths")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds; best one kept")
    ap.add_argument(
        "--json", default=str(Path(__file__).parent / "results" / "serve_backends.json")
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lo, hi = (int(x) for x in args.new_tokens.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_checkpoint(Path(tmp) / "deep", layers=args.layers, **MODEL)
        dm = load(path, device="cpu")
    dm.tokenizer.stop_ids = (10**9,)  # never produced: every request runs to max_new_tokens
    reqs = requests(args.requests, lo, hi)
    total = sum(r.max_new_tokens for r in reqs)

    one = Backend(dm)
    one.start()
    run_all(one, reqs[:1])  # warm-up
    one.close()
    max_len = served_positions(dm.config, hi)
    modes = {"Backend (chat)": lambda: Backend(dm)}
    modes["EngineBackend, 1 slot"] = lambda: EngineBackend(dm, n_slots=1, max_len=max_len)
    best: dict[str, dict] = {}
    ref = None
    load_before = os.getloadavg()
    for _ in range(args.rounds):  # interleaved: background load hits both alike
        for name, make in modes.items():
            backend = make()
            backend.start()
            try:
                wall, cpu, tokens = run_all(backend, reqs)
            finally:
                backend.close()
            if ref is None:
                ref = tokens
            same = sum(a == b for a, b in zip(tokens, ref, strict=True))
            row = {"wall_s": wall, "cpu_s": cpu, "same": same}
            if name not in best or wall < best[name]["wall_s"]:
                best[name] = row
    print(f"{args.requests} requests, {total} tokens, {args.layers} layers, CPU", file=sys.stderr)
    print(f"{'backend':<24}{'wall s':>8}{'tok/s':>8}{'tok/cpu-s':>11}{'same':>6}")
    rows = []
    for name, r in best.items():
        tps, tpc = total / r["wall_s"], total / r["cpu_s"]
        print(f"{name:<24}{r['wall_s']:>8.2f}{tps:>8.1f}{tpc:>11.1f}{r['same']:>4}/{len(reqs)}")
        rows.append({"backend": name, **r, "tokens_per_s": tps, "tokens_per_cpu_s": tpc})
    data = {
        **run_info(),
        "requests": args.requests,
        "tokens": total,
        "layers": args.layers,
        "threads": args.threads,
        "rounds": args.rounds,
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "rows": rows,
    }
    save(args.json, data)


if __name__ == "__main__":
    main()
