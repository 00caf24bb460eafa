"""Readers on tiny datasets written in each benchmark's published layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ixcdoc.errors import UsageError
from ixcdoc.evaluation.datasets import BENCHMARKS, DatasetError, benchmark, read_items
from tests.evaluation import builders


def test_docvqa(tmp_path: Path) -> None:
    items = read_items("docvqa", builders.docvqa(tmp_path, n=3))
    assert [i.question_id for i in items] == ["1000", "1001", "1002"]
    assert items[1].question == "What is total 1?"
    assert items[1].answers == ("1", "1.0")
    assert items[2].image == tmp_path / "documents" / "doc2.png"
    assert items[2].image.is_file()


def test_infovqa_finds_images_in_their_folder(tmp_path: Path) -> None:
    items = read_items("InfoVQA", builders.infovqa(tmp_path, n=2))
    assert [i.question_id for i in items] == ["65000", "65001"]
    assert items[0].answers == ("fact 0",)
    assert items[0].image == tmp_path / "infographicsvqa_images" / "3000.jpeg"


def test_chartqa_human_then_augmented(tmp_path: Path) -> None:
    items = read_items("chartqa", builders.chartqa(tmp_path))
    assert [(i.question_id, i.category) for i in items] == [
        ("human/0", "human"),
        ("augmented/0", "augmented"),
        ("augmented/1", "augmented"),
    ]
    assert items[2].answers == ("12%",)
    assert items[2].image == tmp_path / "val" / "png" / "c2.png"
    # the split folder itself works as DATA too
    assert read_items("chartqa", tmp_path / "val") == items


def test_chartqa_test_split(tmp_path: Path) -> None:
    items = read_items("chartqa", builders.chartqa(tmp_path, split="test"), "test")
    assert len(items) == 3
    assert items[0].image == tmp_path / "test" / "png" / "c1.png"


def test_ocrbench_list_and_string_answers(tmp_path: Path) -> None:
    items = read_items("ocrbench", builders.ocrbench(tmp_path))
    assert [i.question_id for i in items] == ["0", "1"]
    assert items[0].answers == ("HELLO",)
    assert items[1].answers == ("x ^ { 2 }",)
    assert items[1].category == "Handwritten Mathematical Expression Recognition"
    assert items[0].image == tmp_path / "OCRBench_Images" / "IIIT5K" / "0.png"


def test_missing_dataset_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"val_v1\.0\.json"):
        read_items("docvqa", tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        read_items("docvqa", tmp_path / "nope")


def test_test_split_without_answers_is_refused(tmp_path: Path) -> None:
    doc = {"data": [{"questionId": 1, "question": "q", "image": "documents/a.png"}]}
    (tmp_path / "test_v1.0.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(UsageError, match="no scorable split 'test'"):
        read_items("docvqa", tmp_path, "test")
    (tmp_path / "val_v1.0.json").write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(DatasetError, match="has no 'answers'"):
        read_items("docvqa", tmp_path, "val")


def test_entry_without_a_key_names_it(tmp_path: Path) -> None:
    (tmp_path / "OCRBench.json").write_text(json.dumps([{"id": 3}]), encoding="utf-8")
    with pytest.raises(DatasetError, match="entry 0 has no 'question'"):
        read_items("ocrbench", tmp_path)


def test_unknown_benchmark() -> None:
    with pytest.raises(UsageError, match="docvqa, infovqa, chartqa, mpdocvqa, ocrbench"):
        benchmark("textvqa")


def test_upstream_settings() -> None:
    # VLMEvalKit's XComposer2_4KHD: HD55 for DocVQA/InfoVQA val, HD25 otherwise; OCRBench is
    # listed for 55 but its capitalized name never matches the lower-cased dataset name, so
    # upstream runs it at 25. VQA answers are capped at 100 tokens.
    assert {n: b.hd for n, b in BENCHMARKS.items()} == {
        "docvqa": 55,
        "infovqa": 55,
        "chartqa": 25,
        "ocrbench": 25,
        "mpdocvqa": 55,  # DocVQA's pages, DocVQA's tier
    }
    assert all(b.max_new_tokens == 100 for b in BENCHMARKS.values())
    q = BENCHMARKS["docvqa"].query("What is it?")
    assert q.startswith("Answer the question using a single word or phrase.")
    assert q.endswith("What is it?")


def test_malformed_entries_and_escaping_images_are_one_line_errors(tmp_path: Path) -> None:
    """Found by an adversarial run: a non-object entry crashed with a traceback, wrong types
    were scored, and an image path could point anywhere on the machine."""
    import json

    from ixcdoc.evaluation.datasets import DatasetError, read_items

    def docvqa(entries: list) -> Path:
        root = tmp_path / f"d{len(list(tmp_path.iterdir()))}"
        root.mkdir()
        (root / "val_v1.0.json").write_text(json.dumps({"data": entries}))
        return root

    good = {"questionId": 1, "question": "q?", "image": "documents/x.png", "answers": ["a"]}
    for bad, why in [
        ([good, 3], "is not an object"),
        ([dict(good, question=5)], "'question' should be text"),
        ([dict(good, answers=[])], "'answers' should be a non-empty list"),
        ([dict(good, answers=[None])], "'answers' should be a non-empty list"),
        ([dict(good, image="../../etc/passwd")], "leaves the dataset folder"),
        ([dict(good, image="/etc/hostname")], "leaves the dataset folder"),
    ]:
        with pytest.raises(DatasetError) as e:
            read_items("docvqa", docvqa(bad))
        assert why in e.value.message and "\n" not in e.value.message


def test_mpdocvqa_pages_in_order_and_the_answer_page(tmp_path: Path) -> None:
    items = read_items("mpdocvqa", builders.mpdocvqa(tmp_path))
    assert [i.question_id for i in items] == ["57344", "57345"]
    first = items[0]
    assert first.pages == tuple(tmp_path / "images" / f"ffbf0023_{i}.jpg" for i in range(3))
    assert all(p.is_file() for p in first.pages)
    assert (first.answer_page, first.image) == (1, first.pages[0])
    assert first.answers == ("1 March 1998", "March 1, 1998")
    assert items[1].answer_page == 0 and len(items[1].pages) == 2
    # the release unpacked one level deeper (images/images/) and qas at the root also read
    (tmp_path / "images").rename(tmp_path / "pages")
    (tmp_path / "images").mkdir()
    (tmp_path / "pages").rename(tmp_path / "images" / "images")
    (tmp_path / "qas" / "val.json").rename(tmp_path / "val.json")
    again = read_items("mpdocvqa", tmp_path)
    assert again[0].pages[2] == tmp_path / "images" / "images" / "ffbf0023_2.jpg"


def test_mpdocvqa_bad_entries_are_one_line_errors(tmp_path: Path) -> None:
    root = builders.mpdocvqa(tmp_path / "ok")
    good = json.loads((root / "qas" / "val.json").read_text())["data"][0]
    for n, (bad, why) in enumerate(
        [
            (dict(good, answer_page_idx=3), "'answer_page_idx' should be an index into its 3"),
            (dict(good, answer_page_idx=None), "'answer_page_idx' should be an index"),
            (dict(good, page_ids=[]), "'page_ids' should be a non-empty list of page ids"),
            (dict(good, page_ids=["../../x"], answer_page_idx=0), "leaves the dataset folder"),
            ({k: v for k, v in good.items() if k != "answers"}, "test annotations are withheld"),
        ]
    ):
        root = tmp_path / f"bad{n}"
        (root / "qas").mkdir(parents=True)
        (root / "qas" / "val.json").write_text(json.dumps({"data": [bad]}))
        with pytest.raises(DatasetError) as e:
            read_items("mpdocvqa", root)
        assert why in e.value.message and "\n" not in e.value.message


def test_ocrbench_ids_are_positions_because_the_release_repeats_ids(tmp_path: Path) -> None:
    # OCRBench.json has 1,000 questions and 857 distinct ids; some pairs share id and question.
    root = builders.ocrbench(tmp_path)
    entries = json.loads((root / "OCRBench.json").read_text())
    entries.append(dict(entries[0]))  # the same id, image and question again
    (root / "OCRBench.json").write_text(json.dumps(entries))
    items = read_items("ocrbench", root)
    assert [i.question_id for i in items] == ["0", "1", "2"]
    assert items[2].question == items[0].question


def test_rrc_readers_refuse_a_repeated_question_id(tmp_path: Path) -> None:
    # DocVQA, InfographicVQA and MP-DocVQA keep the RRC's ids (its scorer keys on them): a
    # repeat is an error naming both entries.
    root = builders.docvqa(tmp_path / "docvqa", n=3)
    doc = json.loads((root / "val_v1.0.json").read_text())
    doc["data"][2]["questionId"] = doc["data"][0]["questionId"]
    (root / "val_v1.0.json").write_text(json.dumps(doc))
    with pytest.raises(DatasetError) as e:
        read_items("docvqa", root)
    assert "entries 0 and 2 share questionId '1000'" in e.value.message
    assert str(root / "val_v1.0.json") in e.value.message

    root = builders.infovqa(tmp_path / "infovqa", n=2)
    path = root / "infographicsVQA_val_v1.0.json"
    doc = json.loads(path.read_text())
    doc["data"][1]["questionId"] = doc["data"][0]["questionId"]
    path.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="entries 0 and 1 share questionId '65000'"):
        read_items("infovqa", root)

    root = builders.mpdocvqa(tmp_path / "mp")
    path = root / "qas" / "val.json"
    doc = json.loads(path.read_text())
    doc["data"][1]["questionId"] = doc["data"][0]["questionId"]
    path.write_text(json.dumps(doc))
    with pytest.raises(DatasetError, match="entries 0 and 1 share questionId '57344'"):
        read_items("mpdocvqa", root)


def test_empty_answers_are_read_not_refused(tmp_path: Path) -> None:
    # The reference scorers score an empty gold answer (ANLS: 1 only for an empty
    # prediction; OCRBench: a hit, '' is in every prediction); a list with one is no error.
    root = builders.docvqa(tmp_path / "docvqa", n=1)
    doc = json.loads((root / "val_v1.0.json").read_text())
    doc["data"][0]["answers"] = ["", "0"]
    (root / "val_v1.0.json").write_text(json.dumps(doc))
    assert read_items("docvqa", root)[0].answers == ("", "0")

    root = builders.chartqa(tmp_path / "chartqa")
    path = root / "val" / "val_human.json"
    path.write_text(json.dumps([{"imgname": "c1.png", "query": "q?", "label": ""}]))
    assert read_items("chartqa", root)[0].answers == ("",)

    root = builders.ocrbench(tmp_path / "ocrbench")
    entries = json.loads((root / "OCRBench.json").read_text())
    entries[0]["answers"] = [""]
    (root / "OCRBench.json").write_text(json.dumps(entries))
    assert read_items("ocrbench", root)[0].answers == ("",)


def test_docvqa_and_infovqa_as_the_rrc_download_unpacks(tmp_path: Path) -> None:
    # spdocvqa_qas.zip -> spdocvqa_qas/val_v1.0_withQT.json; spdocvqa_images.tar.gz -> every
    # image in one flat spdocvqa_images/ while the JSON says "documents/<name>"
    root = builders.docvqa(tmp_path / "docvqa", n=2)
    (root / "spdocvqa_qas").mkdir()
    (root / "val_v1.0.json").rename(root / "spdocvqa_qas" / "val_v1.0_withQT.json")
    (root / "documents").rename(root / "spdocvqa_images")
    items = read_items("docvqa", root)
    assert [i.image for i in items] == [root / "spdocvqa_images" / f"doc{i}.png" for i in (0, 1)]
    # infographicsvqa_qas.zip -> infographicsvqa_qas/...; the images folder was read already
    root = builders.infovqa(tmp_path / "infovqa", n=1)
    (root / "infographicsvqa_qas").mkdir()
    name = "infographicsVQA_val_v1.0_withQT.json"
    (root / "infographicsVQA_val_v1.0.json").rename(root / "infographicsvqa_qas" / name)
    [item] = read_items("infovqa", root)
    assert item.image == root / "infographicsvqa_images" / "3000.jpeg"


def test_check_images_counts_the_missing_and_names_the_first(tmp_path: Path) -> None:
    from ixcdoc.evaluation.datasets import check_images

    root = builders.docvqa(tmp_path / "docvqa", n=3)
    items = read_items("docvqa", root)
    check_images(items, root)  # all there: nothing to say
    (root / "documents" / "doc1.png").unlink()
    (root / "documents" / "doc2.png").unlink()
    with pytest.raises(DatasetError) as e:
        check_images(items, root)
    msg = e.value.message
    assert "2 of the 3 images" in msg and "doc1.png (question 1001)" in msg
    assert "\n" not in msg and e.value.exit_code == 1
    check_images(items[:1], root)  # --limit 1 needs only doc0.png
    # MP-DocVQA: every page of a question counts
    mp = builders.mpdocvqa(tmp_path / "mp")
    (mp / "images" / "ffbf0023_2.jpg").unlink()
    with pytest.raises(DatasetError, match=r"1 of the 5 images .* is missing.*ffbf0023_2\.jpg"):
        check_images(read_items("mpdocvqa", mp), mp)
