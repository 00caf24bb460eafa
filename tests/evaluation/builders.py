"""Tiny synthetic datasets in each benchmark's published layout, with images made by PIL."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, ImageDraw


def png(path: Path, label: str, size: tuple[int, int] = (120, 90)) -> Path:
    """A white image of size (width, height) with a line of black text."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, "white")
    ImageDraw.Draw(im).text((5, 5), label, fill="black")
    im.save(path)
    return path


def docvqa(root: Path, n: int = 3) -> Path:
    """``val_v1.0.json`` + ``documents/*.png`` as the DocVQA val release lays them out."""
    data = []
    for i in range(n):
        png(root / "documents" / f"doc{i}.png", f"total {i}", size=(100 + 40 * i, 140))
        data.append(
            {
                "questionId": 1000 + i,
                "question": f"What is total {i}?",
                "question_types": ["form"],
                "image": f"documents/doc{i}.png",
                "docId": i,
                "ucsf_document_id": f"doc{i}",
                "ucsf_document_page_no": "1",
                "answers": [str(i), f"{i}.0"],
                "data_split": "val",
            }
        )
    doc = {"dataset_name": "docvqa", "dataset_split": "val", "dataset_version": "1.0", "data": data}
    (root / "val_v1.0.json").write_text(json.dumps(doc), encoding="utf-8")
    return root


def infovqa(root: Path, n: int = 2) -> Path:
    """``infographicsVQA_val_v1.0.json`` + images named by ``image_local_name``."""
    data = []
    for i in range(n):
        png(root / "infographicsvqa_images" / f"{3000 + i}.jpeg", f"fact {i}", size=(80, 200))
        data.append(
            {
                "questionId": 65000 + i,
                "question": f"Which fact is number {i}?",
                "image_local_name": f"{3000 + i}.jpeg",
                "image_url": "https://example.invalid/x.jpeg",
                "ocr_output_file": f"{3000 + i}.json",
                "answers": [f"fact {i}"],
                "data_split": "val",
            }
        )
    doc = {"dataset_name": "infographicsVQA", "dataset_split": "val", "data": data}
    (root / "infographicsVQA_val_v1.0.json").write_text(json.dumps(doc), encoding="utf-8")
    return root


def chartqa(root: Path, split: str = "val") -> Path:
    """``{split}/{split}_human.json``, ``{split}_augmented.json`` and ``{split}/png/``."""
    folder = root / split
    human = [{"imgname": "c1.png", "query": "What is the peak?", "label": "42"}]
    augmented = [
        {"imgname": "c1.png", "query": "Which year?", "label": "2019"},
        {"imgname": "c2.png", "query": "What share?", "label": "12%"},
    ]
    png(folder / "png" / "c1.png", "peak 42")
    png(folder / "png" / "c2.png", "share 12%")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}_human.json").write_text(json.dumps(human), encoding="utf-8")
    (folder / f"{split}_augmented.json").write_text(json.dumps(augmented), encoding="utf-8")
    return root


def ocrbench(root: Path) -> Path:
    """``OCRBench.json`` + ``OCRBench_Images/<dataset>/<file>``, answers a list or a string."""
    entries = [
        {
            "dataset_name": "IIIT5K",
            "id": 0,
            "image_path": "IIIT5K/0.png",
            "question": "what is written in the image?",
            "answers": ["HELLO"],
            "type": "Regular Text Recognition",
        },
        {
            "dataset_name": "HME100k",
            "id": 1,
            "image_path": "HME100k/1.png",
            "question": "Please write out the expression of the formula in the image using LaTeX "
            "format.",
            "answers": "x ^ { 2 }",
            "type": "Handwritten Mathematical Expression Recognition",
        },
    ]
    for e in entries:
        png(root / "OCRBench_Images" / e["image_path"], str(e["answers"]))
    (root / "OCRBench.json").write_text(json.dumps(entries), encoding="utf-8")
    return root


# MP-DocVQA: two documents; (width, height) per page, different shapes so that a record's grid
# tells which page was answered.
MP_DOCS = {
    "ffbf0023": [(120, 90), (90, 160), (200, 60)],
    "gkhd0001": [(100, 100), (60, 180)],
}


def mpdocvqa(root: Path, split: str = "val") -> Path:
    """``qas/{split}.json`` + ``images/{page_id}.jpg`` as the RRC's MP-DocVQA release lays them
    out: a question names its document's pages in order and the index of the answer's page."""
    for doc, sizes in MP_DOCS.items():
        for i, size in enumerate(sizes):
            path = root / "images" / f"{doc}_{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            im = Image.new("RGB", size, "white")
            ImageDraw.Draw(im).text((5, 5), f"{doc} page {i}", fill="black")
            im.save(path, "JPEG")
    data = [
        {
            "questionId": 57344,
            "question": "What is the date on page two?",
            "doc_id": "ffbf0023",
            "page_ids": [f"ffbf0023_{i}" for i in range(3)],
            "answers": ["1 March 1998", "March 1, 1998"],
            "answer_page_idx": 1,
            "data_split": split,
        },
        {
            "questionId": 57345,
            "question": "Who signed the letter?",
            "doc_id": "gkhd0001",
            "page_ids": ["gkhd0001_0", "gkhd0001_1"],
            "answers": ["R. Smith"],
            "answer_page_idx": 0,
            "data_split": split,
        },
    ]
    doc = {"dataset_name": "MP-DocVQA", "dataset_split": split, "data": data}
    (root / "qas").mkdir(parents=True, exist_ok=True)
    (root / "qas" / f"{split}.json").write_text(json.dumps(doc), encoding="utf-8")
    return root
