"""What screening a page costs against answering it, on the CPU proxy model.

    python benchmarks/screening.py [--pages 8] [--tiers 1,4,9] [--answer-tokens 16,64]
                                   [--answer-hd 25] [--layers 32] [--tile 56] [--threads 1]
                                   [--rounds 2] [--json out.json]

``ask`` on a scanned document screens every page (``DocModel.page_relevance``: all pages on one
engine, one prefill each, nothing decoded) and answers the best one at the task's tier. This
script times both on the DEEP TINY model of benchmarks/engine.py (32 layers, hidden 64, tile
56, written in the official layout and loaded through the real loader), where time is almost
all per-forward host work: the regime of a fast GPU at small batch, not its FLOP ratio.

- ``screen HDn``: ``page_relevance`` over ``--pages`` letter-shaped pages at once; per page =
  wall / pages.
- ``answer HDm, k tokens``: one page at ``--answer-hd`` (ask's ceiling, the tier a letter scan
  gets) through ``chat_batch`` (ask's engine path), decoding exactly k tokens (stop ids off).

Each row also gives the page's image tokens on the proxy and, as arithmetic from
``ixcdoc.tiling`` (not a measurement), for the real 7B (336-px tiles) on a letter page. The
modes run interleaved for ``--rounds`` rounds; each keeps its best run (other processes only
add time). Prints a table, writes JSON (default benchmarks/results/screening.json).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _results import cpu_model, run_info, save  # benchmarks/_results.py
from engine import MODEL  # benchmarks/engine.py: the CPU proxy's shape
from PIL import Image

from ixcdoc.engine import ChatRequest
from ixcdoc.runtime import load
from ixcdoc.tiling import REAL_TILE, hd_geometry
from ixcdoc.tinyckpt import write_tiny_checkpoint

LETTER = (1100, 850)  # (H, W): a letter page's shape
LETTER_300DPI = (3300, 2550)
QUESTION = "Who signed the contract on behalf of the company?"


def pages(n: int) -> list[Image.Image]:
    """n letter-shaped pages of noise (deterministic): every page costs what its tier costs."""
    rng = np.random.default_rng(0)
    h, w = LETTER
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for _ in range(n)]


def tokens_at(hd: int, tile: int, shape: tuple[int, int]) -> int:
    """Image tokens of a page of ``shape`` (H, W) at tier ``hd`` with ``tile``-px crops."""
    return hd_geometry(shape[0], shape[1], hd, tile).image_tokens(14)


def main() -> None:
    """Time every mode, print the table, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pages", type=int, default=8)
    ap.add_argument("--tiers", default="1,4,9", help="screening tiers")
    ap.add_argument("--answer-tokens", default="16,64", help="answer lengths to compare with")
    ap.add_argument("--answer-hd", type=int, default=25)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--tile", type=int, default=MODEL["tile"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; best one kept")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "screening.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    tiers = [int(t) for t in args.tiers.split(",")]
    lengths = [int(k) for k in args.answer_tokens.split(",")]

    shape = {**MODEL, "tile": args.tile}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_tiny_checkpoint(Path(tmp) / "deep", layers=args.layers, **shape)
        dm = load(path, device="cpu")
    dm.tokenizer.stop_ids = (10**9,)  # never produced: answers run to max_new_tokens
    docs = pages(args.pages)
    dm.page_relevance(docs[:1], QUESTION, hd=1)  # warm-up

    def screen(hd: int):
        return lambda: dm.page_relevance(docs, QUESTION, hd=hd)

    def answer(k: int):
        req = ChatRequest([docs[0]], QUESTION, hd=args.answer_hd, max_new_tokens=k)
        return lambda: dm.chat_batch([req])

    # (name, kind, tier, pages, new tokens, run)
    modes = [(f"screen HD{t}", "screen", t, args.pages, 0, screen(t)) for t in tiers]
    modes += [
        (f"answer HD{args.answer_hd}, {k} tok", "answer", args.answer_hd, 1, k, answer(k))
        for k in lengths
    ]
    best: dict[str, dict] = {}
    load_before = os.getloadavg()
    for _ in range(args.rounds):
        for name, kind, hd, n, k, fn in modes:
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            row = best.setdefault(
                name,
                {
                    "mode": name,
                    "kind": kind,
                    "tier": hd,
                    "pages": n,
                    "new_tokens": k,
                    "image_tokens_proxy": tokens_at(hd, args.tile, LETTER),
                    "image_tokens_7b_letter": tokens_at(hd, REAL_TILE, LETTER_300DPI),
                },
            )
            row["walls_s"] = [*row.get("walls_s", []), round(wall, 4)]
            row["cpus_s"] = [*row.get("cpus_s", []), round(cpu, 4)]
    rows = list(best.values())
    for r in rows:
        r["wall_s_per_page"] = min(r["walls_s"]) / r["pages"]
        r["cpu_s_per_page"] = min(r["cpus_s"]) / r["pages"]
    answers = [r for r in rows if r["kind"] == "answer"]
    for r in rows:
        r["vs_answer"] = {
            str(a["new_tokens"]): r["wall_s_per_page"] / a["wall_s_per_page"] for a in answers
        }
    loadavg = f"load average {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}"
    print(
        f"{args.pages} letter pages, {args.layers} layers, tile {args.tile}, "
        f"{args.threads} thread(s), {cpu_model()}, best of {args.rounds} rounds, {loadavg}"
    )
    head = " ".join(f"{'/ ans ' + str(a['new_tokens']):>9}" for a in answers)
    print(f"{'mode':<20} {'img tok':>7} {'7B tok':>7} {'s/page':>8} {'cpu s/page':>10} {head}")
    for r in rows:
        ratios = " ".join(f"{r['vs_answer'][str(a['new_tokens'])]:>9.3f}" for a in answers)
        print(
            f"{r['mode']:<20} {r['image_tokens_proxy']:>7} {r['image_tokens_7b_letter']:>7} "
            f"{r['wall_s_per_page']:>8.4f} {r['cpu_s_per_page']:>10.4f} {ratios}"
        )
    out = {
        **run_info(),
        "args": vars(args),
        "model": {**shape, "layers": args.layers},
        "loadavg": [load_before[0], os.getloadavg()[0]],
        "rows": rows,
    }
    save(args.json, out)


if __name__ == "__main__":
    main()
