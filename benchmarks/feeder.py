"""The feeder on the CPU: pages/s at HD9, HD25, HD55 by core count, beside a plain render.

    python benchmarks/feeder.py [--tiers 9,25,55] [--repeat 3] [--pages 12] [--json out.json]

Inputs are generated (see benchmarks/preprocess.py): a born-digital paper (10-pt body, a table
per page) and a scan (one 200-dpi greyscale image per page). For each tier, in one run:

- plain: PyMuPDF's ``get_pixmap`` of each paper page at exactly the tier's resized size, in
  this process (the page sizes are worked out beforehand, outside the timing);
- old: what the pipeline does today, ``PdfDocument.render`` at native DPI, then
  ``hd_transform`` (and, in its own column, ``normalize_uint8`` on the CPU);
- feeder: ``Feeder(workers).map`` delivering every page at its HD size (padded), consumed in
  order, for workers = 0 (in this process) and 1, 2, ... processes (1, 2 and all cores).

Each timed pass opens fresh copies of the files, so the page analysis (body font size,
render DPI) is paid every time, as in a real run; worker start-up is timed apart. Times are
the best of ``--repeat`` interleaved passes. Prints a table and writes JSON (default:
benchmarks/results/feeder.json). The target: a born-digital page delivered within 1.5x the
time of the plain render (``ratio`` = feeder s/page / plain s/page).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _results import run_info, save  # benchmarks/_results.py

TARGET_RATIO = 1.5


def plain_pass(path: Path, sizes: list[tuple[int, int]]) -> float:
    """Seconds to open ``path`` and render each page at its (h, w) with PyMuPDF alone."""
    import pymupdf

    t0 = time.perf_counter()
    doc = pymupdf.open(path)
    for n, (h, w) in enumerate(sizes):
        page = doc.load_page(n)
        r = page.rect
        m = pymupdf.Matrix(w / r.width, h / r.height)
        pix = page.get_pixmap(matrix=m, colorspace=pymupdf.csRGB, alpha=False)
        assert (pix.height, pix.width) == (h, w)
    doc.close()
    return time.perf_counter() - t0


def analyse_pass(path: Path) -> float:
    """Seconds to open ``path`` and work out each page's render DPI (``page_info``)."""
    from ixcdoc.inputs import open_document

    t0 = time.perf_counter()
    with open_document(path) as doc:
        for n in range(1, doc.page_count + 1):
            doc.page_info(n)
    return time.perf_counter() - t0


def old_pass(path: Path, hd: int) -> tuple[float, float]:
    """Seconds for native render + hd_transform over every page, and for normalize alone."""

    from ixcdoc.inputs import open_document
    from ixcdoc.preprocess import hd_transform, hwc_uint8, normalize_uint8

    t0 = time.perf_counter()
    norm = 0.0
    with open_document(path) as doc:
        for n in range(1, doc.page_count + 1):
            img = hd_transform(doc.render(n).image, hd)
            t1 = time.perf_counter()
            normalize_uint8(hwc_uint8(img))
            norm += time.perf_counter() - t1
    return time.perf_counter() - t0 - norm, norm


def feeder_pass(feeder: object, path: Path, pages: int, hd: int) -> float:
    """Seconds for ``feeder.map`` to deliver every page of ``path`` at tier ``hd``."""
    from ixcdoc.feeder import FeedItem

    items = [FeedItem(path, n, hd=hd) for n in range(1, pages + 1)]
    t0 = time.perf_counter()
    for fed in feeder.map(items):  # type: ignore[attr-defined]
        if fed.error is not None:
            raise fed.error
        assert fed.pixels is not None and fed.pixels.shape[2] == 3
    return time.perf_counter() - t0


def main() -> None:
    """Run the passes, print the table, write the JSON."""
    import pymupdf
    import torch

    # benchmarks/preprocess.py (this folder is first on sys.path). Imported here, not at the
    # top: spawned workers re-import this module, and that one imports torch.
    from preprocess import make_paper, make_scan

    from ixcdoc.feeder import Feeder
    from ixcdoc.inputs import open_document
    from ixcdoc.tiling import hd_geometry

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiers", default="9,25,55")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--pages", type=int, default=12, help="pages of the generated paper")
    ap.add_argument("--json", default=str(Path(__file__).parent / "results" / "feeder.json"))
    args = ap.parse_args()
    tiers = [int(x) for x in args.tiers.split(",")]
    cores = os.cpu_count() or 1
    workers = sorted({1, 2, cores})
    torch.set_num_threads(1)  # the feeder's job is the CPU side; one thread like a worker
    pymupdf.TOOLS.set_icc(False)  # as ixcdoc does (plain render on equal terms)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = {"paper": Path(tmp) / "paper.pdf", "scan": Path(tmp) / "scan.pdf"}
        make_paper(src["paper"], args.pages)
        make_scan(src["scan"], max(2, args.pages // 2))
        copies = iter(range(10**9))

        def fresh(kind: str) -> Path:
            p = Path(tmp) / f"{kind}_{next(copies)}.pdf"
            shutil.copyfile(src[kind], p)
            return p

        with open_document(src["paper"]) as doc:
            infos = [doc.page_info(n) for n in range(1, doc.page_count + 1)]
        with open_document(src["scan"]) as doc:
            scan_pages = doc.page_count
        pools: dict[int, Feeder] = {0: Feeder(0)}
        startup: dict[int, float] = {0: 0.0}
        try:
            for n in workers:
                t0 = time.perf_counter()
                pools[n] = Feeder(n)
                feeder_pass(pools[n], fresh("paper"), 1, 9)  # starts the processes
                startup[n] = time.perf_counter() - t0
            for hd in tiers:
                geoms = [hd_geometry(i.native_h, i.native_w, hd) for i in infos]
                sizes = [(g.resized_h, g.resized_w) for g in geoms]
                best: dict[str, float] = {}

                def keep(key: str, s: float, best: dict[str, float] = best) -> None:
                    best[key] = min(best.get(key, s), s)

                for i in range(args.repeat + 1):  # the first pass warms caches, not counted
                    warm = i == 0
                    t_plain = plain_pass(fresh("paper"), sizes)
                    t_analyse = analyse_pass(fresh("paper"))
                    t_old, t_norm = old_pass(fresh("paper"), hd)
                    t_scan_old, _norm = old_pass(fresh("scan"), hd)
                    t_feed = {
                        n: feeder_pass(f, fresh("paper"), len(infos), hd) for n, f in pools.items()
                    }
                    t_scan = {
                        n: feeder_pass(f, fresh("scan"), scan_pages, hd) for n, f in pools.items()
                    }
                    if warm:
                        continue
                    keep("plain", t_plain)
                    keep("analyse", t_analyse)
                    keep("old", t_old)
                    keep("normalize", t_norm)
                    keep("scan_old", t_scan_old)
                    for n in pools:
                        keep(f"feed{n}", t_feed[n])
                        keep(f"scan{n}", t_scan[n])
                pages = len(infos)
                plain_ms = 1000 * best["plain"] / pages
                row = {
                    "tier": hd,
                    "pages": pages,
                    "resized": f"{sizes[0][0]}x{sizes[0][1]}",
                    "padded": f"{geoms[0].padded_h}x{geoms[0].padded_w}",
                    "plain_ms": round(plain_ms, 2),
                    "analyse_ms": round(1000 * best["analyse"] / pages, 2),
                    "old_ms": round(1000 * best["old"] / pages, 2),
                    "old_plus_normalize_ms": round(
                        1000 * (best["old"] + best["normalize"]) / pages, 2
                    ),
                    "old_ratio": round(best["old"] / best["plain"], 2),
                    "old_plus_normalize_ratio": round(
                        (best["old"] + best["normalize"]) / best["plain"], 2
                    ),
                    "plain_pages_per_s": round(pages / best["plain"], 1),
                    "old_pages_per_s": round(pages / best["old"], 1),
                    "feeder": {},
                    "scan_pages": scan_pages,
                    "scan_old_pages_per_s": round(scan_pages / best["scan_old"], 1),
                    "scan_feeder_pages_per_s": {},
                }
                for n in pools:
                    label = "in-process" if n == 0 else f"{n} process{'es' if n > 1 else ''}"
                    row["feeder"][label] = {
                        "ms_per_page": round(1000 * best[f"feed{n}"] / pages, 2),
                        "pages_per_s": round(pages / best[f"feed{n}"], 1),
                        "ratio": round(best[f"feed{n}"] / best["plain"], 2),
                    }
                    row["scan_feeder_pages_per_s"][label] = round(scan_pages / best[f"scan{n}"], 1)
                rows.append(row)
        finally:
            for f in pools.values():
                f.close()

    print(f"feeder vs plain PyMuPDF render, {cores} cores, paper of {len(infos)} pages")
    labels = list(rows[0]["feeder"])
    head = ["tier", "plain ms", "analyse ms", "plain p/s", "old p/s", "old ratio"]
    head += [f"{lab} p/s (ratio)" for lab in labels]
    print(" | ".join(head))
    for r in rows:
        cells = [
            f"HD{r['tier']}",
            str(r["plain_ms"]),
            str(r["analyse_ms"]),
            str(r["plain_pages_per_s"]),
            str(r["old_pages_per_s"]),
            f"{r['old_ratio']}x",
        ]
        cells += [
            f"{r['feeder'][lab]['pages_per_s']} ({r['feeder'][lab]['ratio']}x)" for lab in labels
        ]
        print(" | ".join(cells))
    print(f"scan ({rows[0]['scan_pages']} pages, hd_transform path): pages/s")
    print(" | ".join(["tier", "old in-process", *labels]))
    for r in rows:
        cells = [f"HD{r['tier']}", str(r["scan_old_pages_per_s"])]
        cells += [str(r["scan_feeder_pages_per_s"][lab]) for lab in labels]
        print(" | ".join(cells))
    print("worker start-up s: " + ", ".join(f"{n}: {startup[n]:.2f}" for n in workers))
    out = {
        "benchmark": "feeder",
        **run_info(),
        "target_ratio": TARGET_RATIO,
        "startup_s": {str(n): round(startup[n], 2) for n in workers},
        "rows": rows,
    }
    save(args.json, out)


if __name__ == "__main__":
    main()
