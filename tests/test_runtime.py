"""The library API: load, encode_image, prompt_logits and chat against upstream references."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

import ixcdoc
from ixcdoc import runtime
from ixcdoc.errors import DeviceError, UsageError
from ixcdoc.runtime import DocModel, load

from .model.upstream import TINY_CKPT, UPSTREAM, case_id, chat_cases, encode_cases, tensor


@pytest.fixture(scope="module")
def dm() -> DocModel:
    return load(TINY_CKPT, device="cpu")


def _image(case) -> Image.Image:
    return Image.open(UPSTREAM / case["image"])


def test_load_attributes(dm) -> None:
    assert dm.device == torch.device("cpu")
    assert dm.dtype == torch.float32 and dm.quant == "none"
    assert dm.tile == 56 and dm.config.vision.image_size == 56
    assert dm.tokenizer.stop_ids == (2, 998)
    assert dm.path == TINY_CKPT and dm.model_id == str(TINY_CKPT)
    assert ixcdoc.load is not None  # the lazy front door exists


def test_auto_device_without_cuda_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"--device cpu --quant bf16.*--selftest --keep"):
        load(TINY_CKPT)


def test_precision_resolution() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime._resolve_precision(cpu, "auto", None) == ("none", torch.float32)
    assert runtime._resolve_precision(cuda, "auto", None) == ("bf16", torch.bfloat16)
    assert runtime._resolve_precision(cuda, "4bit", None) == ("4bit", torch.bfloat16)
    assert runtime._resolve_precision(cpu, "4bit", None) == ("4bit", torch.float32)
    assert runtime._resolve_precision(cuda, "auto", "float16") == ("none", torch.float16)
    with pytest.raises(UsageError):
        runtime._resolve_precision(cpu, "8bit", None)
    with pytest.raises(UsageError):
        runtime._resolve_precision(cpu, "none", "int8")


@pytest.mark.parametrize("case", encode_cases(), ids=case_id)
def test_pixels_and_encode_image(dm, case) -> None:
    px = dm.pixels(_image(case), case["hd_num"])
    torch.testing.assert_close(px, tensor(case["pixel"]), rtol=0, atol=1e-5)
    emb = dm.encode_image(px)
    assert emb.shape == (case["n_image_tokens"], dm.config.hidden_size)
    torch.testing.assert_close(emb, tensor(case["embeds"]), rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", chat_cases(), ids=case_id)
def test_prompt_logits_string_path_matches_upstream(dm, case) -> None:
    logits = dm.prompt_logits(
        [_image(case)], case["query"], case["hd_num"], meta_instruction=case["meta_instruction"]
    )
    assert list(logits.shape) == case["logits_shape"]
    torch.testing.assert_close(logits, tensor(case["logits"]), rtol=0, atol=1e-4)


@pytest.mark.parametrize("case", chat_cases(), ids=case_id)
def test_chat_greedy_matches_upstream(dm, case) -> None:
    streamed: list[int] = []
    ans = dm.chat(
        [_image(case)],
        case["query"],
        hd=case["hd_num"],
        meta_instruction=case["meta_instruction"],
        max_new_tokens=8,
        on_token=streamed.append,
    )
    assert ans.token_ids == case["greedy_tokens"] == streamed
    assert ans.text == case["greedy_text"]
    assert ans.stop_reason == "max_new_tokens"
    assert ans.n_image_tokens == case["n_image_tokens"]
    assert ans.prompt_tokens == case["seq_len"]
    assert ans.hd == ans.tier == case["hd_num"]
    assert ans.grid == ((3, 3) if case["hd_num"] == 9 else (1, 1))
    assert {"vision_ms", "prefill_ms", "decode_ms"} <= set(ans.timings)


def test_chat_passes_both_stop_ids(dm, monkeypatch) -> None:
    seen = {}
    real = runtime.generate

    def spy(*args, **kwargs):
        seen["stop_ids"] = tuple(kwargs["stop_ids"])
        return real(*args, **kwargs)

    monkeypatch.setattr(runtime, "generate", spy)
    dm.chat([_image(chat_cases()[1])], "hi", hd=1, max_new_tokens=1)
    assert seen["stop_ids"] == (dm.tokenizer.eos_id, 998)


def test_query_without_placeholder_gets_image_prepended(dm) -> None:
    img = _image(chat_cases()[1])
    a = dm.prompt_logits([img], "What is this?", 1, meta_instruction="")
    b = dm.prompt_logits([img], "<ImageHere>What is this?", 1, meta_instruction="")
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_two_images(dm) -> None:
    imgs = [_image(c) for c in chat_cases()]
    p = dm.embed_prompt(imgs, "<ImageHere> and <ImageHere>: same?", hd=1)
    assert p.grids == [(1, 1), (1, 1)] and p.n_image_tokens == 26
    assert int(p.im_mask.sum()) == 26


def test_prompt_is_truncated_at_max_length(monkeypatch) -> None:
    dm = load(TINY_CKPT, device="cpu")
    dm.model.config = dataclasses.replace(dm.model.config, max_length=30)
    ans = dm.chat([_image(chat_cases()[1])], "Read it.", hd=1, max_new_tokens=2)
    assert ans.prompt_tokens == 30 and ans.truncated


def test_bad_arguments_are_usage_errors(dm) -> None:
    img = _image(chat_cases()[1])
    with pytest.raises(UsageError):
        dm.chat([img], "x", hd=0)
    with pytest.raises(UsageError, match="2 <ImageHere> placeholders"):
        dm.chat([img], "<ImageHere><ImageHere>", hd=1)
    with pytest.raises(UsageError):
        dm.chat([img], "x", hd=1, top_p=0.0)


def test_load_4bit_on_cpu() -> None:
    pytest.importorskip("bitsandbytes")
    dm4 = load(TINY_CKPT, device="cpu", quant="4bit")
    assert dm4.quant == "4bit" and dm4.dtype == torch.float32
    ans = dm4.chat([_image(chat_cases()[1])], "Read it.", hd=1, max_new_tokens=3)
    assert ans.stop_reason in ("max_new_tokens", "stop_token")


def test_bf16_on_cpu_loads_and_is_close_to_fp32(dm) -> None:
    """dtype='bfloat16' on the CPU: no GPU fit check (it used to ask CUDA for free memory and
    crash), and the bf16 model's logits stay close to float32's."""
    cpu = load(TINY_CKPT, device="cpu", dtype="bfloat16")
    assert cpu.dtype == torch.bfloat16 and cpu.quant == "bf16"
    case = chat_cases()[1]
    a = cpu.prompt_logits([_image(case)], case["query"], 1, meta_instruction="")
    b = dm.prompt_logits([_image(case)], case["query"], 1, meta_instruction="")
    assert torch.nn.functional.cosine_similarity(a.float(), b, dim=-1).min() > 0.98


def test_a_dtype_the_model_cannot_run_in_is_a_usage_error() -> None:
    for bad in (torch.int8, torch.float64, "int8"):
        with pytest.raises(UsageError, match="dtype"):
            load(TINY_CKPT, device="cpu", dtype=bad)


@pytest.mark.gpu
def test_bf16_on_cuda_close_to_fp32(dm) -> None:
    gpu = load(TINY_CKPT, device="cuda")
    assert gpu.dtype == torch.bfloat16 and gpu.quant == "bf16"
    case = chat_cases()[1]
    a = gpu.prompt_logits([_image(case)], case["query"], 1, meta_instruction="")
    b = dm.prompt_logits([_image(case)], case["query"], 1, meta_instruction="")
    cos = torch.nn.functional.cosine_similarity(a.cpu(), b, dim=-1)
    assert cos.min() > 0.98
    ans = gpu.chat([_image(case)], case["query"], hd=1, meta_instruction="", max_new_tokens=8)
    assert len(ans.token_ids) == 8 or ans.stop_reason == "stop_token"


def test_prompt_logits_after_a_short_chat_cache(dm) -> None:
    """A KV cache left by chat (sized for a short prompt) must not break a longer prompt."""
    img = Image.new("RGB", (40, 30), "white")
    dm.chat([img], "Hi", hd=1, max_new_tokens=1)  # leaves a cache of ~256 positions
    ref = dm.model.max_seq_length
    long_query = " ".join(["word"] * 400)
    logits = dm.prompt_logits([img], long_query, hd=1)
    assert ref and logits.shape[0] > ref  # longer than the cache chat left, and it ran
