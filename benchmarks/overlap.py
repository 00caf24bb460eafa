"""What rendering and preprocessing ahead buys: pages/s with and without overlap.

    python benchmarks/overlap.py [PATH ...] [--max-new-tokens 24] [--repeat 3] [--json out.json]

Runs ``ixcdoc.batch.run`` (the code behind ``ixcdoc extract``) with a tiny random model
in the official layout on the CPU: with ``read_ahead=0`` (render, then run, page after
page) and with ``read_ahead=2`` (the default: the next pages render on a worker thread while
the model works). The process mode measured earlier was removed (it lost to the thread).
Default input: the README samples six times over (36 pages: born-digital, scanned, a
screenshot and a chart).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _results import run_info, save  # benchmarks/_results.py

from ixcdoc.batch import run
from ixcdoc.inputs import Sources
from ixcdoc.pagerun import Job
from ixcdoc.runtime import load
from ixcdoc.tasks import EXTRACT
from ixcdoc.tinyckpt import write_tiny_checkpoint

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="*", default=[str(ROOT / "samples")] * 6)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--hd", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=1,
        help="threads for the model; 1 leaves a core free, as a GPU run leaves the CPU free",
    )
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "overlap.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_tiny_checkpoint(Path(tmp) / "tiny", layers=8)
        model = load(ckpt, device="cpu")
        job = Job(EXTRACT, EXTRACT.prompt, hd=args.hd, max_new_tokens=args.max_new_tokens)
        rows = []
        modes = [("sequential", 0), ("thread", 2)]
        for _ in range(args.repeat):  # interleaved, so drift hits every mode
            for name, ahead in modes:
                t0 = time.perf_counter()
                stats = run(job, Sources(args.paths), model=model, read_ahead=ahead, batch_size=1)
                rows.append((name, stats.ok, time.perf_counter() - t0))
    result = []
    for name, ahead in modes:
        times = [t for m, _, t in rows if m == name]
        pages = next(n for m, n, _ in rows if m == name)
        best = min(times)
        result.append(
            {
                "mode": name,
                "read_ahead": ahead,
                "pages": pages,
                "seconds_best": round(best, 3),
                "pages_per_s": round(pages / best, 2),
            }
        )
    gain = result[1]["pages_per_s"] / result[0]["pages_per_s"]
    print(
        f"tiny model (8 layers), CPU, {torch.get_num_threads()} torch threads, HD{args.hd}, "
        f"{args.max_new_tokens} new tokens per page"
    )
    print(f"{'mode':<22} {'pages':>6} {'best s':>8} {'pages/s':>8}")
    for r in result:
        print(f"{r['mode']:<22} {r['pages']:>6} {r['seconds_best']:>8} {r['pages_per_s']:>8}")
    print(f"gain of the default (thread) over sequential: x{gain:.2f}")
    out = {
        "benchmark": "overlap",
        **run_info(),
        "hd": args.hd,
        "max_new_tokens": args.max_new_tokens,
        "rows": result,
        "gain": round(gain, 3),
    }
    save(args.json, out)


if __name__ == "__main__":
    main()
