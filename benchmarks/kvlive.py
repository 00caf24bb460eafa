"""How much of the KV cache a decode step reads against how much is live (issue 21's baseline).

    python benchmarks/kvlive.py [--tiers 16,25,36,55] [--pages 4] [--new-tokens 256]
                                [--batch 8] [--json out.json]

An ``extract`` job (``ixcdoc.batch.run``, speculation off) over square PNG pages whose native
sizes give each tier in ``--tiers`` (1344 px: HD16, 1680: HD25, 2016: HD36, 2352: HD55),
``--pages`` of each, the tiers taking turns in reading order, on a tiny random checkpoint
with the real model's tiles and patches (its prompts have the real positions per tier), every
page generating ``--new-tokens`` tokens
(stop ids moved outside the vocabulary, the repetition guard off). The engine counts every
decode step's rows (``engine.runner.CacheReads``): live positions (each row's position + 1),
what the step read (the CPU's eager step: every row the longest row's span, rounded up to
64), and what a captured CUDA-graph step of the same rows reads (the batch padded to its
bucket, each row the whole slot, sized for the largest page the job may send). The counts
are positions, so they hold on any device; multiply by 128 KiB (bf16, the 7B's 32 layers x
8 KV heads x 128 x 2 x 2 bytes) for bytes.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from pathlib import Path

import torch
from _results import run_info, save  # benchmarks/_results.py
from PIL import Image, ImageDraw

from ixcdoc import guards
from ixcdoc.batch import run
from ixcdoc.inputs import Sources
from ixcdoc.pagerun import Job
from ixcdoc.runtime import load
from ixcdoc.tasks import EXTRACT
from ixcdoc.tiling import min_tier_for_native
from ixcdoc.tinyckpt import write_tiny_checkpoint

SIDE = {16: 1344, 25: 1680, 36: 2016, 55: 2352}  # square pages' sides, per auto tier


def write_page(path: Path, side: int, seed: int) -> None:
    """A white square page of ``side`` px with lines of random words (not blank)."""
    rng = random.Random(seed)
    img = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(img)
    words = ["total", "invoice", "page", "table", "amount", "date", "name", "sum", "note"]
    for y in range(40, side - 40, 28):
        draw.text((40, y), " ".join(rng.choice(words) for _ in range(12)), fill=0)
    img.save(path)


def main() -> None:
    """Run the job, print the ratios, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiers", default="16,25,36,55")
    ap.add_argument("--pages", type=int, default=4, help="pages of each tier")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8, help="pages in flight (engine slots)")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "kvlive.json"))
    args = ap.parse_args()
    tiers = [int(t) for t in args.tiers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dm = load(write_tiny_checkpoint(root / "tiny336", tile=336), device="cpu")
        dm.tokenizer.stop_ids = (10**9,)  # never produced: every page runs to --new-tokens
        # nor stopped as a repetition loop (a random model repeats itself)
        guards.REPEAT_MIN_SPAN = 10**9
        pages = root / "pages"
        pages.mkdir()
        for t in tiers:
            assert min_tier_for_native(SIDE[t], SIDE[t]) <= t, t
            for i in range(args.pages):
                write_page(pages / f"{i:03d}-hd{t:02d}.png", SIDE[t], seed=100 * t + i)
        job = Job(EXTRACT, EXTRACT.prompt, max_new_tokens=args.new_tokens, speculate="off")
        stats = run(job, Sources([str(pages)]), model=dm, batch_size=args.batch)
    reads = stats.cache_reads
    assert reads is not None and stats.ok == len(tiers) * args.pages, stats
    eager, captured = reads.attended / reads.live, reads.captured / reads.live
    print(
        f"{stats.ok} pages (HD{', HD'.join(map(str, tiers))}), {args.new_tokens} new tokens "
        f"each, {args.batch} in flight, {reads.steps} decode steps"
    )
    print(f"live positions per step      {reads.live / reads.steps:>10,.0f}")
    print(f"eager step reads / live      {eager:>10.2f}")
    print(f"captured step reads / live   {captured:>10.2f}")
    save(
        args.json,
        {
            **run_info(),
            "args": vars(args),
            "pages": stats.ok,
            "steps": reads.steps,
            "live": reads.live,
            "attended_eager": reads.attended,
            "attended_captured": reads.captured,
            "eager_over_live": round(eager, 3),
            "captured_over_live": round(captured, 3),
            "torch_threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
