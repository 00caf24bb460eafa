"""Full-size IXC2-4KHD on one CUDA GPU: load, peak VRAM, vision, prefill, decode, per tier.

    python benchmarks/gpu.py [--quant bf16,4bit] [--tiers 9,16,25,55] [--new-tokens 512]
                             [--reference] [--compile] [--json out.json]
    python benchmarks/gpu.py --tiny          # the same code on the CPU with tiny shapes
    python benchmarks/gpu.py --batched [--batches 1,4,16,64] [--tiers 16,25]
                             [--quant bf16,4bit] [--new-tokens 512]   # the batched engine
                             [--speculate 0,25,50,75,100 [--speculate-pages 16]]

The model has the official shapes (ModelConfig() = the 7B) and random weights made on the
device (``weights.random_model``), so no checkpoint is needed. Each tier runs one synthetic
letter page (2200x1700 px) through the vision tower and a prefill of the spliced prompt,
then decodes exactly ``--new-tokens`` tokens (no stop ids). Reported per (precision, tier):

- peak VRAM (torch.cuda.max_memory_allocated) against the ``ixcdoc.vram`` estimate;
- vision ms, prefill ms, decode tokens/s and seconds per page;
- decode against the memory-bandwidth bound: bytes of weights read per token over the
  device-copy bandwidth measured in the same run;
- with ``--reference``: the upstream-style loop of benchmarks/_reference.py (dynamic cache,
  eager fp32 attention, HF-style generate) on the same weights, and the speed ratio;
- a least-squares fit of prefill ms against image tokens (linear means no N^2 term).

``--batched``: the batched engine (``DocModel.chat_batch``, decode captured with CUDA graphs
per batch bucket) on the same random model: for each (precision, tier, batch) it runs
``--batch-pages`` x batch copies of the page (at least 2), every one decoding exactly
``--new-tokens`` tokens (no stop ids), and reports pages/s (and its ratio to batch 1), decode
tokens/s over the run, and peak VRAM against ``ixcdoc.vram.estimate_batch_vram`` for that
batch; then it times one engine decode step of that many rows mid-answer against the
memory-bandwidth bound (decoder weights + every row's KV cache read once, at the copy bandwidth
measured in the same run) and names the first batch whose step is compute-bound (slower than
1.5x that bound).

``--batched --speculate P,...``: per (precision, tier) also benchmarks/speculate.py's table on
this model: ``--speculate-pages`` copies of the page, tokens/s with speculation off and with
drafts that are each page's greedy answer corrupted at P% of positions, per batch size (the
GPU twin of the CPU proxy's table; ``--tiny`` runs it on the CPU as a dry run).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))  # for _reference

from _results import run_info, save  # benchmarks/_results.py

from ixcdoc.config import ModelConfig, VisionConfig
from ixcdoc.generate import SamplingConfig, generate
from ixcdoc.model.weights import random_model
from ixcdoc.preprocess import hd_transform, hwc_uint8, normalize_uint8
from ixcdoc.tiling import hd_geometry
from ixcdoc.vram import estimate_batch_vram, estimate_vram, kv_bytes_per_token, param_counts

TINY = ModelConfig(
    vocab_size=1000,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    wqkv_lora_rank=8,
    lora_rank=16,
    vision=VisionConfig(
        image_size=56,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
    ),
)


def page_image() -> Image.Image:
    """A synthetic letter page at 200 dpi: lines of text on white."""
    img = Image.new("RGB", (1700, 2200), "white")
    d = ImageDraw.Draw(img)
    for i in range(60):
        d.text((150, 120 + 32 * i), f"{i:02d} The quick brown fox jumps over 1,234.56", fill=0)
    return img


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def copy_bandwidth(dev: torch.device) -> float | None:
    """Device-to-device copy bandwidth in bytes/s (read + write), or None on the CPU."""
    if dev.type != "cuda":
        return None
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device=dev)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync(dev)
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        b.copy_(a)
    sync(dev)
    return 2 * n * reps / (time.perf_counter() - t0)


def decode_bytes_per_token(cfg: ModelConfig, quant: str) -> int:
    """Weight bytes one decode step must read: everything but the embedding table and ViT."""
    p = param_counts(cfg)
    per = 0.5 + 4 / 64 if quant == "4bit" else 2
    dec = int(p.decoder_linear * per) + 2 * (p.plora + p.norms)
    return dec + 2 * cfg.vocab_size * cfg.hidden_size  # the output head


def splice(model: torch.nn.Module, img_emb: torch.Tensor, dev: torch.device) -> tuple:
    """[BOS + 40 text ids] [image] [BOS + 20 text ids] -> embeds [1, L, D], im_mask [1, L]."""
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    a = torch.randint(3, vocab - 8, (41,), generator=g).to(dev)
    b = torch.randint(3, vocab - 8, (21,), generator=g).to(dev)
    return model.splice([a, img_emb, b])


def run_one(model, cfg, dev, quant, hd, new_tokens, img, ref, compile_decode) -> dict:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    hd_img = hd_transform(img, hd, cfg.tile)
    pixels = normalize_uint8(hwc_uint8(hd_img).to(dev)).to(model.vision_dtype)
    with torch.inference_mode():
        emb = model.encode_image(pixels)
        sync(dev)
        vision_ms = (time.perf_counter() - t0) * 1000
        embeds, im_mask = splice(model, emb, dev)
        res = generate(
            model,
            embeds,
            im_mask,
            stop_ids=(),
            config=SamplingConfig(max_new_tokens=new_tokens),
            compile_decode=compile_decode,
        )
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    w, h = img.size
    geo = hd_geometry(h, w, hd, cfg.tile)
    n_img = emb.shape[0]
    est = estimate_vram(cfg, n_img, geo.crops, quant=quant, max_new_tokens=new_tokens)
    row = {
        "quant": quant,
        "tier": hd,
        "grid": [geo.rows, geo.cols],
        "image_tokens": n_img,
        "prompt_tokens": embeds.shape[1],
        "vision_ms": round(vision_ms, 1),
        "prefill_ms": round(res.prefill_ms, 1),
        "decode_tokens": res.n_tokens,
        "decode_tok_s": round(res.decode_tokens_per_s, 2),
        "s_per_page": round((vision_ms + res.prefill_ms + res.decode_ms) / 1000, 3),
        "peak_vram_gib": None if peak is None else round(peak / 2**30, 3),
        "estimate_gib": round(est.total_gib, 3),
        # torch's allocator peak excludes the CUDA context the estimate includes
        "estimate_minus_overhead_gib": round((est.total - est.overhead) / 2**30, 3),
    }
    if ref is not None:
        from _reference import greedy_generate

        with torch.inference_mode():
            sync(dev)
            t1 = time.perf_counter()
            r = greedy_generate(
                ref,
                embeds,
                im_mask,
                max_new_tokens=new_tokens,
                eos_token_id=[-1],
                pad_token_id=0,
            )
            sync(dev)
        ref_s = time.perf_counter() - t1
        row["reference_s"] = round(ref_s, 3)
        row["reference_same_tokens"] = list(r.token_ids) == list(res.token_ids)
        row["speedup_vs_reference"] = round(ref_s / ((res.prefill_ms + res.decode_ms) / 1000), 2)
    return row


def doc_model(model: torch.nn.Module, dev: torch.device, dtype: torch.dtype, quant: str):
    """A DocModel over the random model with the tiny tokenizer (ids < 1000) and no stop ids."""
    import tempfile

    from ixcdoc.runtime import DocModel
    from ixcdoc.tinyckpt import write_tokenizer
    from ixcdoc.tokenizer import Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_tokenizer(Path(tmp))
        tok = Tokenizer.from_dir(Path(tmp))
    tok.stop_ids = ()  # every page decodes exactly --new-tokens tokens
    return DocModel(model, tok, device=dev, dtype=dtype, quant=quant)


STEP_REPS = 20  # decode steps timed per batch size
COMPUTE_BOUND = 1.5  # a step this many times slower than the bandwidth bound is compute-bound


def time_decode_step(dm, batch: int, position: int, max_len: int, dev) -> float:
    """Seconds per engine decode step of ``batch`` rows at ``position`` (as the engine runs it:
    captured per bucket on CUDA), averaged over STEP_REPS steps after a warm-up."""
    eng = dm.engine(n_slots=batch, max_len=max_len)
    ids, pos = [0] * batch, [position] * batch
    try:
        with torch.inference_mode():
            for _ in range(3):
                eng.runner.decode(ids, pos)
            sync(dev)
            t0 = time.perf_counter()
            for _ in range(STEP_REPS):
                eng.runner.decode(ids, pos)
            sync(dev)
            return (time.perf_counter() - t0) / STEP_REPS
    finally:
        dm.model.reset_caches()


def run_batched(dm, cfg, dev, quant, hd, batch, pages, new_tokens, img, bw) -> dict:
    """``pages`` copies of the page through chat_batch(max_batch=batch): pages/s, peak VRAM,
    then one decode step of ``batch`` rows timed against the memory-bandwidth bound."""
    from ixcdoc.engine import ChatRequest

    reqs = [ChatRequest([img], "Transcribe the page.", hd=hd, max_new_tokens=new_tokens)] * pages
    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    sync(dev)
    t0 = time.perf_counter()
    answers = dm.chat_batch(reqs, max_batch=batch)
    sync(dev)
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None
    w, h = img.size
    geo = hd_geometry(h, w, hd, cfg.tile)
    n_img = answers[0].n_image_tokens
    text = answers[0].prompt_tokens - n_img
    est = estimate_batch_vram(
        cfg, batch, n_img, geo.crops, quant=quant, max_new_tokens=new_tokens, text_tokens=text
    )
    tokens = sum(len(a.token_ids) for a in answers)
    # one decode step, mid-answer: every row reads all decoder weights once per step, plus its
    # KV cache (a captured step attends over the whole slot: max_len positions per row)
    max_len = -(-(answers[0].prompt_tokens + new_tokens) // 256) * 256  # as chat_batch sizes it
    step_s = time_decode_step(dm, batch, answers[0].prompt_tokens + new_tokens // 2, max_len, dev)
    span = max_len if dev.type == "cuda" else answers[0].prompt_tokens + new_tokens // 2
    step_bytes = decode_bytes_per_token(cfg, quant) + batch * span * kv_bytes_per_token(cfg)
    bound_s = None if bw is None else step_bytes / (bw / 2)  # reads only: half the copy rate
    return {
        "quant": quant,
        "tier": hd,
        "batch": batch,
        "pages": pages,
        "image_tokens": n_img,
        "prompt_tokens": answers[0].prompt_tokens,
        "decode_tokens": tokens,
        "wall_s": round(wall, 3),
        "pages_per_s": round(pages / wall, 3),
        "tokens_per_s": round(tokens / wall, 1),
        "peak_vram_gib": None if peak is None else round(peak / 2**30, 3),
        "estimate_gib": round(est.total_gib, 3),
        "estimate_minus_overhead_gib": round((est.total - est.overhead) / 2**30, 3),
        "step_ms": round(step_s * 1000, 3),
        "step_tokens_per_s": round(batch / step_s, 1),
        "step_bytes": step_bytes,
        "bound_step_ms": None if bound_s is None else round(bound_s * 1000, 3),
        "step_vs_bound": None if bound_s is None else round(bound_s / step_s, 3),
    }


def summarize(group: list[dict]) -> None:
    """Per (precision, tier): pages/s against batch 1, and where the step turns compute-bound.

    Adds ``pages_vs_b1`` to each row (the issue's target: 10x at batch 32 on an 80 GB GPU) and
    prints a table. A step is called compute-bound from the first batch whose step takes more
    than COMPUTE_BOUND x the time of reading its weights and KV at the measured bandwidth.
    """
    base = next((r for r in group if r["batch"] == 1), None)
    turn = None
    for r in group:
        r["pages_vs_b1"] = (
            None if base is None else round(r["pages_per_s"] / base["pages_per_s"], 2)
        )
        vs = r["step_vs_bound"]
        if turn is None and vs is not None and vs < 1 / COMPUTE_BOUND:
            turn = r["batch"]
    head = f"{group[0]['quant']} HD{group[0]['tier']}"
    print(f"{head}: batch, pages/s, x batch 1, step ms, bound ms, step tok/s, peak GiB, estimate")
    for r in group:
        print(
            f"  {r['batch']:>3} {r['pages_per_s']:>8.3f} {r['pages_vs_b1'] or 0:>6.2f}x "
            f"{r['step_ms']:>8.2f} {r['bound_step_ms'] or 0:>8.2f} {r['step_tokens_per_s']:>9.1f} "
            f"{r['peak_vram_gib'] or 0:>7.2f} {r['estimate_gib']:>7.2f}"
        )
    if group[0]["step_vs_bound"] is not None:
        where = f"batch {turn}" if turn is not None else "no batch measured"
        print(f"  compute-bound (step > {COMPUTE_BOUND}x the bandwidth bound) from: {where}")
    for r in group:
        r["compute_bound_from"] = turn


def speculation_rows(dm, dev, quant: str, hd: int, img, args) -> list[dict]:
    """benchmarks/speculate.py's table for ``--speculate-pages`` copies of the page at ``hd``."""
    from speculate import speculation_table  # benchmarks/speculate.py (this folder is on the path)

    from ixcdoc.engine import ChatRequest

    req = ChatRequest([img], "Transcribe the page.", hd=hd, max_new_tokens=args.new_tokens)
    print(f"{quant} HD{hd}: speculation, {args.speculate_pages} pages")
    table = speculation_table(
        dm,
        [req] * args.speculate_pages,
        [int(x) for x in args.batches.split(",")],
        [int(x) for x in args.speculate.split(",")],
        sync=lambda: sync(dev),
    )
    return [{"quant": quant, "tier": hd, "table": "speculate", **r} for r in table]


def main_batched(args, cfg, dev, dtype) -> None:
    """The --batched mode: every (precision, tier, batch), one JSON row each."""
    img = page_image()
    bw = copy_bandwidth(dev)
    rows = []
    for quant in args.quant.split(","):
        model = random_model(cfg, dtype=dtype, device=dev, quant=None if quant == "bf16" else quant)
        dm = doc_model(model, dev, dtype, quant)
        tiers = [int(t) for t in args.tiers.split(",")]
        run_batched(dm, cfg, dev, quant, tiers[0], 2, 2, 4, img, bw)  # warm-up (and capture)
        for hd in tiers:
            group = []
            for b in (int(x) for x in args.batches.split(",")):
                pages = max(2, args.batch_pages * b)
                row = run_batched(dm, cfg, dev, quant, hd, b, pages, args.new_tokens, img, bw)
                group.append(row)
                print(json.dumps(row))
            summarize(group)
            rows += group
            if args.speculate:
                rows += speculation_rows(dm, dev, quant, hd, img, args)
        del model, dm
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    from torch._dynamo.utils import counters

    # compiled steps that inductor ran without CUDA graphs (it logs why): 0 means every
    # captured decode step replayed a graph
    skips = counters["inductor"]["cudagraph_skips"]
    print(f"CUDA graph skips: {skips}")
    out = {
        "benchmark": "gpu-batched",
        "cudagraph_skips": skips,
        "copy_bandwidth_gb_s": None if bw is None else round(bw / 1e9, 1),
        **run_info(),
        "device": device,
        "rows": rows,
    }
    save(args.json, out)


def fit_line(xs: list[float], ys: list[float]) -> dict:
    """Least squares y = a + b x with R^2."""
    n = len(xs)
    if n < 2:
        return {}
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys) or 1.0
    return {
        "ms_at_0": round(a, 2),
        "ms_per_1k_tokens": round(1000 * b, 2),
        "r2": round(1 - ss_res / ss_tot, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quant", default="bf16,4bit")
    ap.add_argument("--tiers", default="9,16,25,55")
    ap.add_argument("--new-tokens", type=int, default=512)
    ap.add_argument("--reference", action="store_true", help="also time the upstream-style loop")
    ap.add_argument("--compile", action="store_true", help="compile the decode step")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the CPU (smoke test)")
    ap.add_argument("--batched", action="store_true", help="the batched engine, per batch")
    ap.add_argument("--batches", default="1,2,4,8,16,32,64")
    ap.add_argument("--batch-pages", type=int, default=1, help="pages per run = this x batch")
    ap.add_argument(
        "--speculate", default="", help="with --batched: draft corruption percents, e.g. 0,100"
    )
    ap.add_argument("--speculate-pages", type=int, default=16, help="pages per speculation run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.json is None:
        name = "gpu_batched.json" if args.batched else "gpu.json"
        args.json = str(Path(__file__).parent / "results" / name)
    if args.tiny:
        cfg, dev, dtype = TINY, torch.device("cpu"), torch.float32
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --tiny for the CPU smoke test")
        cfg, dev, dtype = ModelConfig(), torch.device("cuda"), torch.bfloat16
    if args.batched:
        if args.tiers == "9,16,25,55":
            args.tiers = "16,25"  # the batched tiers
        main_batched(args, cfg, dev, dtype)
        return
    img = page_image()
    bw = copy_bandwidth(dev)
    rows = []
    for quant in args.quant.split(","):
        sync(dev)
        t0 = time.perf_counter()
        model = random_model(cfg, dtype=dtype, device=dev, quant=None if quant == "bf16" else quant)
        sync(dev)
        load_s = time.perf_counter() - t0
        ref = None
        if args.reference and quant == "bf16":
            from _reference import from_ixcdoc

            ref = from_ixcdoc(model)
        tiers = [int(t) for t in args.tiers.split(",")]
        run_one(model, cfg, dev, quant, tiers[0], 4, img, None, args.compile)  # warm-up
        for hd in tiers:
            row = run_one(model, cfg, dev, quant, hd, args.new_tokens, img, ref, args.compile)
            row["load_s"] = round(load_s, 2)
            if bw:
                bound = bw / 2 / decode_bytes_per_token(cfg, quant)  # reads only: half the copy
                row["decode_bound_tok_s"] = round(bound, 1)
                row["decode_vs_bound"] = round(row["decode_tok_s"] / bound, 3)
            rows.append(row)
            print(json.dumps(row))
        del model, ref
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    fits = {
        q: fit_line(
            [r["image_tokens"] for r in rows if r["quant"] == q],
            [r["prefill_ms"] for r in rows if r["quant"] == q],
        )
        for q in args.quant.split(",")
    }
    device = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor()
    out = {
        "benchmark": "gpu",
        **run_info(),
        "device": device,
        "copy_bandwidth_gb_s": None if bw is None else round(bw / 1e9, 1),
        "rows": rows,
        "prefill_fit": fits,
        "cpu_count": os.cpu_count(),
    }
    save(args.json, out)
    print(f"prefill fit: {fits}")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
