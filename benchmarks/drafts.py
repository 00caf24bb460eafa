"""Text-layer drafts on real PDFs: how long they are, what they cover, what they could give.

    python benchmarks/drafts.py [PDF ...] [--manual-pages 32] [--max-new-tokens 48]
                                [--k 8] [--no-model] [--json out.json]

For every page of each PDF (default: samples/*.pdf, the PDF manuals under /usr/share/doc that
are installed, and a generated born-digital manual of ``--manual-pages`` pages with tables and
repeated rows), the draft ``extract`` sends the model (``reading.page_draft``: the text layer
in MuPDF's order, cut at ``tasks.DRAFT_CHARS``), measured with the real InternLM2 tokenizer
(/work/shared/upstream-reference/real-tokenizer, or ``IXCDOC_REAL_TOKENIZER``):

- ``draft tok/page``: the draft's tokens per page with a text layer (mean, max);
- ``kept``: the share of the page's text-layer characters the draft keeps (100% unless cut);
- ``oracle``: what the engine's n-gram proposer (``engine.draft.Proposer``, up to ``--k``
  tokens a step) would give if the model wrote a known transcription token for token: the
  share of its tokens accepted from proposals (the draft's and its own output's), the share of
  the proposed tokens accepted, and tokens per decode step (``no pause``: the same without the
  engine's pause after failing drafts). The transcription is the page's
  text re-read in position order (MuPDF's ``sort=True``: blocks reordered as a transcription
  reorders them) or, for the generated manual, the Markdown it was written from (tables with
  pipes, headings with ``#``);
- ``tiny e2e``: ``ixcdoc.batch.run`` with ``extract`` on a tiny random checkpoint with the
  real vocabulary, ``--speculate auto``, batch 8: the share of the records' ``tokens`` they
  say were ``accepted_tokens`` (and their ``draft_tokens``, the drafts' lengths). Meaningless
  for quality (the model is random); it exercises the path from the text layer to the
  records.

Prints a table, writes JSON (default benchmarks/results/drafts.json).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymupdf

ROOT = Path(__file__).resolve().parent.parent
REAL_TOKENIZER = Path(
    os.environ.get("IXCDOC_REAL_TOKENIZER", "/work/shared/upstream-reference/real-tokenizer")
)
SYSTEM_PDFS = (
    "/usr/share/doc/libtasn1-doc/libtasn1.pdf",
    "/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf",
)


# --- a generated manual: born-digital pages whose Markdown transcription is known --------------

WORDS = (
    "register buffer value field clock reset channel interrupt transfer device mode status "
    "counter address control enable bit write read the a of to is when each after before "
    "returns sets clears holds width offset driver queue frame packet timeout error"
).split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
    return " ".join(words).capitalize() + "."


def make_manual(path: Path, pages: int, seed: int = 0) -> list[str]:
    """A ``pages``-page technical manual (headings, paragraphs, a register table of repeated
    rows per page, a code line) written with PyMuPDF; returns each page's Markdown."""
    rng = random.Random(seed)
    doc = pymupdf.open()
    markdown = []
    for n in range(1, pages + 1):
        page = doc.new_page(width=612, height=792)
        md: list[str] = []
        y = 72.0
        title = f"{n}. The {rng.choice(WORDS)} {rng.choice(WORDS)} unit"
        page.insert_text((72, y), title, fontname="hebo", fontsize=14)
        md.append(f"# {title}")
        y += 28
        for _ in range(2):
            para = " ".join(_sentence(rng) for _ in range(4))
            box = pymupdf.Rect(72, y, 540, y + 120)
            spare = page.insert_textbox(box, para, fontname="tiro", fontsize=10)
            y += 120 - spare + 10
            md.append(para)
        header = ("Offset", "Name", "Access", "Reset")
        cols = (72, 160, 300, 380)
        for x, cell in zip(cols, header, strict=True):
            page.insert_text((x, y), cell, fontname="hebo", fontsize=9)
        rows = []
        for r in range(rng.randint(10, 16)):
            name = f"{rng.choice(WORDS).upper()}_{r}"
            row = (f"0x{0x40 * (r + 1):04X}", name, rng.choice(("RW", "RO", "W1C")), "0x00000000")
            rows.append(row)
            y += 13
            for x, cell in zip(cols, row, strict=True):
                page.insert_text((x, y), cell, fontname="helv", fontsize=9)
        md.append("| " + " | ".join(header) + " |")
        md.append("|" + "---|" * len(header))
        md.extend("| " + " | ".join(row) + " |" for row in rows)
        y += 24
        code = f"write_reg(dev, {rows[0][1]}, 0x{rng.randrange(1 << 16):04X});"
        page.insert_text((72, y), code, fontname="cour", fontsize=9)
        md.append(f"`{code}`")
        page.insert_text((300, 760), str(n), fontname="tiro", fontsize=9)
        md.append(str(n))
        markdown.append("\n\n".join(md))
    doc.save(path)
    doc.close()
    return markdown


# --- measuring ---------------------------------------------------------------------------------


def oracle(
    draft: list[int], reference: list[int], k: int, pause: bool = True
) -> tuple[int, int, int]:
    """The engine's per-sequence speculation (``engine.speculate.SeqSpec``: the proposer, the
    source accepted more often first, the pause after failing drafts unless not ``pause``) on
    a model that writes ``reference`` exactly, ``k`` tokens a step: (tokens proposed, of those
    accepted, decode steps)."""
    from ixcdoc.engine.draft import Proposer
    from ixcdoc.engine.speculate import SeqSpec

    spec = SeqSpec(Proposer(draft))
    proposed = accepted = steps = i = 0
    while i < len(reference):
        guess = spec.propose(k) if spec.drafting(steps) or not pause else []
        m = 0
        while m < len(guess) and i + m < len(reference) and guess[m] == reference[i + m]:
            m += 1
        proposed += len(guess)
        accepted += m
        if guess:
            source = spec.proposer.source
            spec.proposer.accepted(m, len(guess))
            spec.update(len(guess), m, steps, source)
        new = reference[i : i + m + 1]
        spec.proposer.extend(new)
        i += len(new)
        steps += 1
    return proposed, accepted, steps


@dataclass
class DocRow:
    name: str
    pages: int
    text_pages: int = 0
    draft_tokens: list[int] = field(default_factory=list)
    text_chars: int = 0
    kept_chars: int = 0
    oracle_of: str = "position order"
    oracle_tokens: int = 0
    oracle_proposed: int = 0
    oracle_accepted: int = 0
    oracle_steps: int = 0
    unpaused_accepted: int = 0
    unpaused_steps: int = 0
    e2e: dict[str, int] = field(default_factory=dict)


def measure(path: Path, tok: Any, k: int, markdown: list[str] | None) -> DocRow:
    """The drafts of every page of ``path``, as ``extract`` reads them."""
    from ixcdoc.inputs import open_document
    from ixcdoc.reading import page_draft

    with open_document(path) as doc, pymupdf.open(path) as raw:
        row = DocRow(path.name, doc.page_count, oracle_of="its Markdown" if markdown else "sorted")
        for n in range(1, doc.page_count + 1):
            if not doc.has_text_layer(n):
                continue
            text = doc.page_text(n)
            draft = page_draft(doc, n)
            if draft is None:
                continue
            row.text_pages += 1
            ids = tok.encode(draft, bos=False)
            row.draft_tokens.append(len(ids))
            row.text_chars += len(text)
            row.kept_chars += len(draft)
            ref_text = markdown[n - 1] if markdown else raw[n - 1].get_text("text", sort=True)
            ref = tok.encode(ref_text, bos=False)
            proposed, accepted, steps = oracle(ids, ref, k)
            row.oracle_tokens += len(ref)
            row.oracle_proposed += proposed
            row.oracle_accepted += accepted
            row.oracle_steps += steps
            _, accepted, steps = oracle(ids, ref, k, pause=False)
            row.unpaused_accepted += accepted
            row.unpaused_steps += steps
    return row


def real_vocab_checkpoint(folder: Path) -> Path:
    """A tiny random checkpoint (2 layers, hidden 64) whose tokenizer is the real one."""
    import ixcdoc.tinyckpt as tiny

    real = (REAL_TOKENIZER / "tokenizer.model").read_bytes()
    made = tiny.tokenizer_model_bytes
    tiny.tokenizer_model_bytes = lambda vocab_size=1000: real  # type: ignore[assignment]
    try:
        return tiny.write_tiny_checkpoint(folder, tokenizer_vocab=92544)
    finally:
        tiny.tokenizer_model_bytes = made  # type: ignore[assignment]


def end_to_end(paths: list[Path], rows: dict[str, DocRow], max_new: int) -> float:
    """``extract`` on every page with the tiny real-vocabulary model: the records' counts."""
    import ixcdoc
    from ixcdoc.batch import run
    from ixcdoc.inputs import Sources
    from ixcdoc.pagerun import Job
    from ixcdoc.records import latest_records
    from ixcdoc.tasks import EXTRACT

    with tempfile.TemporaryDirectory() as tmp:
        model = ixcdoc.load(real_vocab_checkpoint(Path(tmp) / "tiny-real-vocab"), device="cpu")
        out = Path(tmp) / "records.jsonl"
        job = Job(EXTRACT, EXTRACT.prompt, max_new_tokens=max_new, speculate="auto")
        t0 = time.perf_counter()
        run(job, Sources([str(p) for p in paths]), model=model, output=out, batch_size=8)
        wall = time.perf_counter() - t0
        for rec in latest_records(out):
            e = rows[Path(rec.source).name].e2e
            t = rec.timings
            for key, value in (
                ("pages", 1),
                ("tokens", t.tokens or 0),
                ("draft_tokens", t.draft_tokens or 0),
                ("accepted_tokens", t.accepted_tokens or 0),
            ):
                e[key] = e.get(key, 0) + value
    return wall


def pct(a: int, b: int) -> str:
    return f"{100 * a / b:.1f}%" if b else "-"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pdfs", nargs="*", help="PDFs (default: samples, /usr/share/doc, manual)")
    ap.add_argument("--manual-pages", type=int, default=32, help="the generated manual (0: none)")
    ap.add_argument("--max-new-tokens", type=int, default=48, help="per page, end to end")
    ap.add_argument("--k", type=int, default=0, help="tokens a step verifies (oracle; 0: most)")
    ap.add_argument("--no-model", action="store_true", help="skip the end-to-end run")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "drafts.json"))
    args = ap.parse_args()

    sys.path.insert(0, str(ROOT))
    from _results import run_info, save  # benchmarks/_results.py

    from ixcdoc.engine.speculate import K_CHOICES
    from ixcdoc.tasks import DRAFT_CHARS
    from ixcdoc.tokenizer import Tokenizer

    args.k = args.k or K_CHOICES[-1]  # the most draft tokens the engine verifies in a step
    tok = Tokenizer.from_dir(REAL_TOKENIZER)
    paths = [Path(p) for p in args.pdfs]
    if not paths:
        paths = sorted((ROOT / "samples").glob("*.pdf"))
        paths += [Path(p) for p in SYSTEM_PDFS if Path(p).is_file()]
    markdown: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.manual_pages and not args.pdfs:
            manual = Path(tmp) / "generated-manual.pdf"
            markdown[manual.name] = make_manual(manual, args.manual_pages)
            paths.append(manual)
        rows = {p.name: measure(p, tok, args.k, markdown.get(p.name)) for p in paths}
        wall = None if args.no_model else end_to_end(paths, rows, args.max_new_tokens)

    head = (
        f"{'document':<26} {'pages':>5} {'text':>4} {'draft tok/page':>14} {'kept':>6} "
        f"{'oracle of':>12} {'from drafts':>11} {'acc/prop':>8} {'tok/step':>8} "
        f"{'no pause':>8} {'tiny e2e from drafts':>22}"
    )
    print(head)
    out_rows = []
    for r in rows.values():
        mean = sum(r.draft_tokens) / len(r.draft_tokens) if r.draft_tokens else 0.0
        top = max(r.draft_tokens, default=0)
        per_step = r.oracle_tokens / r.oracle_steps if r.oracle_steps else 0.0
        unpaused = r.oracle_tokens / r.unpaused_steps if r.unpaused_steps else 0.0
        e = r.e2e
        e2e = f"{pct(e['accepted_tokens'], e['tokens'])} of {e['tokens']:,}" if e else "-"
        print(
            f"{r.name[:26]:<26} {r.pages:>5} {r.text_pages:>4} {f'{mean:,.0f} / {top:,}':>14} "
            f"{pct(r.kept_chars, r.text_chars):>6} {r.oracle_of:>12} "
            f"{pct(r.oracle_accepted, r.oracle_tokens):>11} "
            f"{pct(r.oracle_accepted, r.oracle_proposed):>8} {per_step:>8.2f} "
            f"{unpaused:>8.2f} {e2e:>22}"
        )
        out_rows.append(
            {
                "document": r.name,
                "pages": r.pages,
                "text_pages": r.text_pages,
                "draft_tokens_per_page": r.draft_tokens,
                "draft_tokens_mean": round(mean, 1),
                "draft_tokens_max": top,
                "text_chars": r.text_chars,
                "kept_chars": r.kept_chars,
                "oracle_of": r.oracle_of,
                "oracle_tokens": r.oracle_tokens,
                "oracle_proposed": r.oracle_proposed,
                "oracle_accepted": r.oracle_accepted,
                "oracle_steps": r.oracle_steps,
                "unpaused_accepted": r.unpaused_accepted,
                "unpaused_steps": r.unpaused_steps,
                "tiny_e2e": e,
            }
        )

    result = {
        **run_info(),
        "args": vars(args),
        "draft_chars": DRAFT_CHARS,
        "tokenizer": str(REAL_TOKENIZER / "tokenizer.model"),
        "e2e_wall_s": None if wall is None else round(wall, 2),
        "rows": out_rows,
    }
    save(args.json, result)


if __name__ == "__main__":
    main()
