"""Decode host overhead on CPU: ms/token of ixcdoc's decode loop vs an upstream-style loop.

    python benchmarks/decode.py [--prompt-lens 64,1024] [--new-tokens 32] [--repeat 10]
                                [--layers 32] [--threads 1] [--compile] [--baseline REV]
                                [--json out.json]

A DEEP TINY model (32 layers, hidden 64, 8 heads, 2 KV heads, MLP 128, vocabulary 1000, tile
56) is written in the official layout into a temporary folder and loaded through the real
loader. At this width a step's arithmetic is a few MFLOP, so the time per token is almost all
host work: Python, op dispatch, allocation, syncs, i.e. the overhead that dominates decoding on
a fast GPU. Both loops decode greedily from the same prompt (text with an image span) on the
same weight tensors, with stop ids outside the vocabulary so that every run decodes exactly
``--new-tokens`` tokens; the benchmark asserts that they choose the same tokens.

- ``ixcdoc``: ``ixcdoc.generate.generate`` (static KV cache, SDPA).
- ``upstream-style``: ``benchmarks/_reference.py`` (cat-grown cache, eager attention, HF loop).
- ``ixcdoc compiled`` (``--compile``): the same with ``compile_decode=True`` (inductor); the
  compilation is timed separately and excluded.
- ``ixcdoc@REV`` (``--baseline REV``): ``ixcdoc/generate.py`` and ``ixcdoc/model/internlm2.py``
  as of git revision REV (read with ``git show``), on the same weights, interleaved in the
  same process: a before/after comparison that drifting background load skews far less than
  two separate runs would.

Per-token time is the interval between consecutive streamed tokens, over all runs after one
warm-up run per loop; the runs interleave the loops. Reported: the median and the 10th
percentile (p10). Other load on the machine only ever adds time, so on a shared machine p10 is
the steadier estimate of the loop's own cost; the JSON also has mean, min and thread CPU time.
ops/tok counts the aten ops one decode step dispatches, reads/tok the device-to-host scalar
reads among them (``item``/``bool`` on a tensor: a sync on a GPU). Prints a table and writes
JSON (default: benchmarks/results/decode.json).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import _reference  # benchmarks/_reference.py: the script's folder is first on sys.path
import torch
from _results import cpu_model, run_info, save  # benchmarks/_results.py
from torch.utils._python_dispatch import TorchDispatchMode

from ixcdoc.generate import SamplingConfig, generate
from ixcdoc.model.weights import load_model
from ixcdoc.tinyckpt import write_tiny_checkpoint

MODEL = {
    "layers": 32,
    "hidden": 64,
    "heads": 8,
    "kv_heads": 2,
    "intermediate": 128,
    "tokenizer_vocab": 1000,
    "tile": 56,
}
EOS_ID = 2  # the tiny checkpoint's pad id, which HF greedy search pads finished rows with


def make_prompt(
    model: torch.nn.Module, length: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Text ids with an image-like span in the middle: embeds [1, L, D], im_mask [1, L]."""
    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab - 6, (1, length), generator=g)  # no special tokens
    with torch.no_grad():
        embeds = model.embed_tokens(ids)  # [1, L, D]
        start, n = length // 4, length // 4  # (longer spans make greedy collapse to one id)
        noise = torch.randn(n, embeds.shape[-1], generator=g) * embeds.std()
        embeds[0, start : start + n] = noise  # stands in for projected image tokens
    im_mask = torch.zeros(1, length, dtype=torch.bool)
    im_mask[0, start : start + n] = True
    return embeds, im_mask


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


Runner = Callable[[int, Callable[[int], None] | None], list[int]]


def per_step_ops(run: Runner) -> tuple[float, float]:
    """(aten ops, host scalar reads) per decode step: difference of a 12- and a 4-token run."""
    counts = []
    for n in (4, 12):
        with OpCounter() as c:
            run(n, None)
        # a scalar read shows as aten.item under inference_mode, else as _local_scalar_dense
        reads = c.ops["aten.item"] + c.ops["aten._local_scalar_dense"]
        counts.append((sum(c.ops.values()), reads))
    (a4, r4), (a12, r12) = counts
    return (a12 - a4) / 8, (r12 - r4) / 8


def load_baseline(rev: str, model: torch.nn.Module) -> tuple[Callable, torch.nn.Module]:
    """``generate`` and a decoder on ``model``'s weights from ixcdoc at git revision ``rev``."""
    root = Path(__file__).resolve().parents[1]
    modules = {}
    for rel in ("model/internlm2.py", "generate.py"):
        src = subprocess.run(
            ["git", "-C", str(root), "show", f"{rev}:ixcdoc/{rel}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        name = "_baseline_" + rel.removesuffix(".py").replace("/", "_")
        module = types.ModuleType(name)
        module.__file__ = f"{rev}:ixcdoc/{rel}"
        sys.modules[name] = module  # dataclasses look their module up
        exec(compile(src, module.__file__, "exec"), module.__dict__)
        modules[rel] = module
    with torch.device("meta"):
        old = modules["model/internlm2.py"].InternLM2ForCausalLM(model.config)
    state = {k: v for k, v in model.state_dict().items() if k.startswith(("model.", "output."))}
    old.load_state_dict(state, strict=True, assign=True)  # the same tensors, no copy
    return modules["generate.py"].generate, old.eval()


def timed(run: Runner, n: int) -> tuple[list[int], list[float], list[float]]:
    """Run once: token ids, then wall and thread-CPU ms between consecutive streamed tokens."""
    stamps: list[tuple[float, float]] = []

    def on_token(_tok: int) -> None:
        stamps.append((time.perf_counter(), time.thread_time()))

    tokens = run(n, on_token)
    pairs = list(itertools.pairwise(stamps))
    wall = [(b[0] - a[0]) * 1000 for a, b in pairs]
    cpu = [(b[1] - a[1]) * 1000 for a, b in pairs]
    return tokens, wall, cpu


def bench_length(
    model: torch.nn.Module,
    ref: torch.nn.Module,
    length: int,
    new_tokens: int,
    repeat: int,
    compile_decode: bool,
    baseline: tuple[str, Callable, torch.nn.Module] | None = None,
) -> dict:
    """All loops at one prompt length: ms/token, ops/token, token agreement."""
    embeds, im_mask = make_prompt(model, length, seed=length)
    vocab = model.config.vocab_size
    never = (vocab, vocab + 1)  # stop ids the model cannot emit: a fixed number of tokens

    def ixcdoc_run(n: int, on_token, compiled: bool = False) -> list[int]:
        res = generate(
            model,
            embeds,
            im_mask,
            stop_ids=never,
            config=SamplingConfig(max_new_tokens=n),
            on_token=on_token,
            compile_decode=compiled,
        )
        assert res.stop_reason == "max_new_tokens", res.stop_reason
        return res.token_ids

    def reference_run(n: int, on_token) -> list[int]:
        res = _reference.greedy_generate(
            ref,
            embeds,
            im_mask,
            max_new_tokens=n,
            eos_token_id=never,
            pad_token_id=EOS_ID,
            on_token=on_token,
        )
        return res.token_ids

    loops: dict[str, Runner] = {"ixcdoc": ixcdoc_run, "upstream-style": reference_run}
    if baseline is not None:
        rev, old_generate, old_model = baseline

        def baseline_run(n: int, on_token) -> list[int]:
            cfg = SamplingConfig(max_new_tokens=n)
            res = old_generate(
                old_model, embeds, im_mask, stop_ids=never, config=cfg, on_token=on_token
            )
            return res.token_ids

        loops[f"ixcdoc@{rev}"] = baseline_run
    compile_s = None
    if compile_decode:
        t = time.perf_counter()
        ixcdoc_run(new_tokens, None, compiled=True)  # compiles for this cache size
        compile_s = time.perf_counter() - t
        loops["ixcdoc compiled"] = lambda n, cb: ixcdoc_run(n, cb, compiled=True)

    tokens: dict[str, list[int]] = {}
    wall: dict[str, list[float]] = {name: [] for name in loops}
    cpu: dict[str, list[float]] = {name: [] for name in loops}
    for name, run in loops.items():  # warm-up, excluded
        tokens[name] = run(new_tokens, None)
    for _ in range(repeat):
        for name, run in loops.items():
            toks, gaps, cpu_gaps = timed(run, new_tokens)
            assert toks == tokens[name], f"{name}: tokens changed between runs"
            wall[name].extend(gaps)
            cpu[name].extend(cpu_gaps)
    first = tokens["ixcdoc"]
    for name, toks in tokens.items():
        if toks != first:
            raise AssertionError(f"{name} chose different tokens than ixcdoc: {toks} vs {first}")

    row: dict = {"prompt_tokens": length, "new_tokens": new_tokens, "loops": {}}
    for name, run in loops.items():
        entry = {
            "ms_per_token_median": round(statistics.median(wall[name]), 3),
            "ms_per_token_p10": round(statistics.quantiles(wall[name], n=10)[0], 3),
            "ms_per_token_mean": round(statistics.fmean(wall[name]), 3),
            "ms_per_token_min": round(min(wall[name]), 3),
            "cpu_ms_per_token_median": round(statistics.median(cpu[name]), 3),
            "steps_measured": len(wall[name]),
        }
        if name != "ixcdoc compiled":  # dispatch counting cannot see inside compiled code
            ops, reads = per_step_ops(run)
            entry["aten_ops_per_token"] = ops
            entry["host_reads_per_token"] = reads
        row["loops"][name] = entry
    base = row["loops"]["upstream-style"]
    for entry in row["loops"].values():
        for stat in ("median", "p10"):
            ratio = base[f"ms_per_token_{stat}"] / entry[f"ms_per_token_{stat}"]
            entry[f"speedup_vs_upstream_style_{stat}"] = round(ratio, 2)
    row["same_tokens"] = True
    row["first_tokens"] = first[:8]
    if compile_s is not None:
        row["compile_s"] = round(compile_s, 1)
    return row


def print_table(rows: list[dict]) -> None:
    """The results as a plain-text table on stdout."""
    print(
        f"{'prompt':>6}  {'loop':<18} {'ms/tok median':>13} {'ms/tok p10':>10} {'ops/tok':>7} "
        f"{'reads/tok':>9} {'speedup median':>14} {'speedup p10':>11}"
    )
    for r in rows:
        for name, e in r["loops"].items():
            ops = e.get("aten_ops_per_token")
            reads = e.get("host_reads_per_token")
            print(
                f"{r['prompt_tokens']:>6}  {name:<18} {e['ms_per_token_median']:>13.2f} "
                f"{e['ms_per_token_p10']:>10.2f} {'-' if ops is None else f'{ops:.0f}':>7} "
                f"{'-' if reads is None else f'{reads:.0f}':>9} "
                f"{e['speedup_vs_upstream_style_median']:>13.2f}x "
                f"{e['speedup_vs_upstream_style_p10']:>10.2f}x"
            )
        if "compile_s" in r:
            print(f"{'':>6}  (compile, first call: {r['compile_s']} s)")


def main() -> None:
    """Parse arguments, build the model, run every length, print and write the results."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt-lens", default="64,1024", help="comma-separated prefix lengths")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens decoded per run")
    ap.add_argument("--repeat", type=int, default=10, help="timed runs per loop and length")
    ap.add_argument("--layers", type=int, default=MODEL["layers"])
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (1: tiny ops gain nothing from threads, and on a shared "
        "machine a descheduled OpenMP worker stalls every parallel op)",
    )
    ap.add_argument("--compile", action="store_true", help="add the compile_decode=True loop")
    ap.add_argument("--baseline", metavar="REV", help="add ixcdoc's decode loop at git REV")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "decode.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.prompt_lens.split(",")]
    spec = {**MODEL, "layers": args.layers}

    with tempfile.TemporaryDirectory() as tmp:
        write_tiny_checkpoint(Path(tmp), seed=0, **spec)
        model = load_model(tmp)
        ref = _reference.from_ixcdoc(model)
        baseline = None
        if args.baseline:
            baseline = (args.baseline, *load_baseline(args.baseline, model))
        t0 = time.perf_counter()
        rows = [
            bench_length(model, ref, n, args.new_tokens, args.repeat, args.compile, baseline)
            for n in lengths
        ]
        elapsed = time.perf_counter() - t0

    print(
        f"decode host overhead: {spec['layers']} layers x hidden {spec['hidden']}, float32, "
        f"CPU ({cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)), "
        f"torch {torch.__version__}"
    )
    print_table(rows)
    out = {
        "benchmark": "decode",
        **run_info(),
        "torch_threads": torch.get_num_threads(),
        "model": {**spec, "dtype": "float32", "device": "cpu"},
        "method": "interval between streamed tokens (median, p10, mean, min; wall and thread "
        "CPU time) after one warm-up run per loop, loops interleaved run by run",
        "seconds": round(elapsed, 1),
        "rows": rows,
    }
    save(args.json, out)


if __name__ == "__main__":
    main()
