"""Installation checks: what ``ixcdoc doctor`` reports, and the self-test that runs the whole
path on a tiny random checkpoint on the CPU."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ixcdoc.errors import UsageError

SELFTEST_PAGE = "selftest.pdf"  # with --keep, the self-test's page stays beside the checkpoint
SELFTEST_QUESTION = "What is the total?"


def selftest(log: Callable[[str, float, str], None], keep: Path | None = None) -> None:
    """Run the whole path on a tiny random checkpoint in the official layout, on the CPU.

    Writes the checkpoint to a temporary folder (or to ``keep``, which must not exist yet, and
    stays there for ``--model``, with the self-test's page as ``SELFTEST_PAGE`` to try it on),
    renders a generated PDF page, loads through the real loader (and in 4-bit when bitsandbytes
    is installed), encodes and generates. ``log(step, ms, detail)`` reports each step; any
    failure raises.
    """
    import importlib.util
    import tempfile
    import time

    import pymupdf

    from ixcdoc.errors import ModelError
    from ixcdoc.inputs import open_bytes
    from ixcdoc.runtime import load
    from ixcdoc.tiling import hd_geometry
    from ixcdoc.tinyckpt import write_tiny_checkpoint

    def step(name: str, fn: Callable[[], str]) -> None:
        t0 = time.perf_counter()
        detail = fn()
        log(name, (time.perf_counter() - t0) * 1000, detail)

    if keep is not None and keep.exists():
        raise UsageError(f"--keep {keep}: already exists; name a folder to create")
    if keep is not None and not keep.parent.is_dir():
        raise UsageError(f"--keep {keep}: folder {keep.parent} does not exist")
    with tempfile.TemporaryDirectory(prefix="ixcdoc-selftest-") as tmp:
        ckpt = Path(tmp) / "tiny" if keep is None else keep
        ctx: dict[str, Any] = {}

        def write() -> str:
            write_tiny_checkpoint(ckpt)
            return f"{len(list(ckpt.iterdir()))} files, 2 .bin shards + index, tokenizer"

        def render() -> str:
            pdf = pymupdf.open()
            page = pdf.new_page(width=612, height=792)
            page.insert_text((72, 90), "Invoice 0042", fontsize=18)
            page.insert_text((72, 130), "Total due: 12.50 EUR", fontsize=10)
            data = pdf.tobytes()
            if keep is not None:
                (keep / SELFTEST_PAGE).write_bytes(data)
            doc = open_bytes(data, source=SELFTEST_PAGE)
            ctx["page"] = doc.render(1)
            doc.close()
            info = ctx["page"].info
            return f"{info.native_w}x{info.native_h} px ({info.dpi_rule})"

        def load_fp32() -> str:
            ctx["model"] = load(ckpt, device="cpu")
            return f"tile {ctx['model'].tile}, {ctx['model'].precision}"

        def encode() -> str:
            m, img = ctx["model"], ctx["page"].image
            emb = m.encode_image(m.pixels(img, 4))
            w, h = img.size
            want = hd_geometry(h, w, 4, m.tile).image_tokens(m.config.vision.patch_size)
            if emb.shape[0] != want:
                raise ModelError(f"selftest: {emb.shape[0]} image tokens, tiling says {want}")
            return f"HD4: {emb.shape[0]} image tokens of width {emb.shape[1]}"

        def chat() -> str:
            ans = ctx["model"].chat([ctx["page"].image], SELFTEST_QUESTION, hd=4, max_new_tokens=8)
            return f"{len(ans.token_ids)} tokens ({ans.stop_reason})"

        step("write a tiny checkpoint in the official layout", write)
        step("render a PDF page at native resolution", render)
        step("load it through the real loader (CPU, float32)", load_fp32)
        step("preprocess and encode the page", encode)
        step("generate", chat)
        if importlib.util.find_spec("bitsandbytes") is not None:

            def load_4bit() -> str:
                m = load(ckpt, device="cpu", quant="4bit")
                ans = m.chat([ctx["page"].image], "Total?", hd=1, max_new_tokens=4)
                return f"NF4 decoder linears, {len(ans.token_ids)} tokens"

            step("load and generate in 4-bit (bitsandbytes)", load_4bit)


def try_command(keep: Path) -> str:
    """A command that answers on the kept tiny model in seconds: ask about the self-test's page."""
    import shlex

    from ixcdoc.tinyckpt import try_options

    page = shlex.quote(str(keep / SELFTEST_PAGE))
    return f"ixcdoc ask {page} {shlex.quote(SELFTEST_QUESTION)} {try_options(str(keep))}"


def doctor_report() -> dict[str, Any]:
    """What ``ixcdoc doctor`` prints: GPU, versions, optional kernels, cached weights, and
    ``try``: with no GPU or no cached weights, the command that builds a tiny model (else None)."""
    import importlib.metadata
    import importlib.util
    import platform

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    import torch

    report: dict[str, Any] = {"ixcdoc": version("ixcdoc"), "python": platform.python_version()}
    report["torch"] = torch.__version__
    report["cuda"] = torch.version.cuda or "not built with CUDA"
    if torch.cuda.is_available():
        free, total = torch.cuda.mem_get_info()
        report["gpu"] = (
            f"{torch.cuda.get_device_name()} ({free / 2**30:.1f} GiB free of {total / 2**30:.1f})"
        )
    else:
        report["gpu"] = (
            "none (CUDA not available): --device cpu runs float32, or bf16 with --quant bf16, "
            "slowly"
        )
    bnb = version("bitsandbytes")
    report["bitsandbytes"] = bnb or "not installed (pip install 'ixcdoc[quant]' for --quant 4bit)"
    fa = version("flash-attn") if importlib.util.find_spec("flash_attn") else None
    report["flash-attn"] = fa or "not installed (optional; torch SDPA is used)"
    from ixcdoc.hub import cached_models, hub_cache_dir

    report["hub cache"] = str(hub_cache_dir())
    report["cached_models"] = [
        {"id": rid, "path": str(p), "gib": round(size / 2**30, 2)}
        for rid, p, size in cached_models()
    ]
    from ixcdoc.tinyckpt import keep_command

    ready = torch.cuda.is_available() and bool(report["cached_models"])
    report["try"] = None if ready else keep_command()
    return report
