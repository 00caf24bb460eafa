"""Checkpoint formats, strict key/shape checking, meta-device loading and the 7B layout."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ixcdoc.config import ModelConfig
from ixcdoc.errors import WeightsError
from ixcdoc.model.weights import build_meta_model, find_checkpoint, load_model

from .upstream import TINY_CKPT, chat_cases, chat_parts


def _fixture_state_dict() -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    for f in sorted(TINY_CKPT.glob("pytorch_model-*.bin")):
        sd.update(torch.load(f, weights_only=True))
    return sd


def _write(
    folder: Path, sd: dict[str, torch.Tensor], fmt: str = "safetensors", shards: int = 1
) -> Path:
    """Write sd as a checkpoint folder (config.json copied from the fixture)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(TINY_CKPT / "config.json", folder / "config.json")
    keys = sorted(sd)
    ext = "safetensors" if fmt == "safetensors" else "bin"
    stem = "model" if fmt == "safetensors" else "pytorch_model"

    def save(part: dict[str, torch.Tensor], name: str) -> None:
        part = {k: v.contiguous() for k, v in part.items()}
        if fmt == "safetensors":
            save_file(part, str(folder / name))
        else:
            torch.save(part, folder / name)

    if shards == 1:
        save(sd, f"{stem}.{ext}")
        return folder
    weight_map = {}
    for i in range(shards):
        name = f"{stem}-{i + 1:05d}-of-{shards:05d}.{ext}"
        part = {k: sd[k] for k in keys[i::shards]}
        save(part, name)
        weight_map.update(dict.fromkeys(part, name))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / f"{stem}.{ext}.index.json").write_text(json.dumps(index))
    return folder


def _logits(model) -> torch.Tensor:
    embeds, im_mask = model.splice(chat_parts(chat_cases()[1]))
    with torch.inference_mode():
        return model(embeds, im_mask)[0]


@pytest.fixture(scope="module")
def reference_logits() -> torch.Tensor:
    return _logits(load_model(TINY_CKPT))


@pytest.mark.parametrize(
    ("fmt", "shards"), [("safetensors", 1), ("safetensors", 3), ("bin", 1), ("bin", 2)]
)
def test_formats_give_identical_logits(tmp_path, reference_logits, fmt, shards) -> None:
    folder = _write(tmp_path / "ckpt", _fixture_state_dict(), fmt, shards)
    found = find_checkpoint(folder)
    assert found.format == fmt and len(found.files) == shards
    torch.testing.assert_close(_logits(load_model(folder)), reference_logits, rtol=0, atol=0)


def test_official_layout_is_sharded_bin() -> None:
    found = find_checkpoint(TINY_CKPT)
    assert found.format == "bin"
    assert found.index is not None and found.index.name == "pytorch_model.bin.index.json"
    assert len(found.files) == 2


def test_safetensors_preferred_over_bin(tmp_path) -> None:
    folder = _write(tmp_path / "ckpt", _fixture_state_dict(), "bin", 1)
    _write(folder, _fixture_state_dict(), "safetensors", 1)
    assert find_checkpoint(folder).format == "safetensors"


def test_no_weights_is_an_error(tmp_path) -> None:
    (tmp_path / "config.json").write_text((TINY_CKPT / "config.json").read_text())
    with pytest.raises(WeightsError, match="no weights found"):
        load_model(tmp_path)


def test_missing_shard_is_named(tmp_path) -> None:
    folder = _write(tmp_path / "ckpt", _fixture_state_dict(), "safetensors", 2)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"model-00002-of-00002\.safetensors"):
        load_model(folder)


def test_missing_key_is_named(tmp_path) -> None:
    sd = _fixture_state_dict()
    del sd["model.layers.1.feed_forward.w3.Plora_B.weight"]
    with pytest.raises(WeightsError, match=r"missing keys \(1\)") as e:
        load_model(_write(tmp_path / "c", sd))
    assert "model.layers.1.feed_forward.w3.Plora_B.weight [128, 16]" in str(e.value)


def test_unexpected_key_is_named(tmp_path) -> None:
    sd = _fixture_state_dict()
    sd["model.layers.0.attention.wk.weight"] = torch.zeros(4, 4)
    with pytest.raises(WeightsError, match="unexpected keys") as e:
        load_model(_write(tmp_path / "c", sd))
    assert "model.layers.0.attention.wk.weight [4, 4]" in str(e.value)


def test_misshapen_key_is_named_with_both_shapes(tmp_path) -> None:
    sd = _fixture_state_dict()
    sd["vision_proj.0.weight"] = torch.zeros(64, 127)
    with pytest.raises(WeightsError, match="misshapen keys") as e:
        load_model(_write(tmp_path / "c", sd))
    assert "vision_proj.0.weight: expected [64, 128], got [64, 127]" in str(e.value)


def test_all_problems_in_one_error(tmp_path) -> None:
    sd = _fixture_state_dict()
    del sd["model.norm.weight"]
    sd["bogus.weight"] = torch.zeros(2)
    sd["plora_sub_GN"] = torch.zeros(1, 1, 128)
    with pytest.raises(WeightsError) as e:
        load_model(_write(tmp_path / "c", sd))
    msg = str(e.value)
    assert "model.norm.weight [64]" in msg
    assert "bogus.weight [2]" in msg
    assert "plora_sub_GN: expected [1, 1, 1, 128], got [1, 1, 128]" in msg


def test_harmless_extras_are_ignored(tmp_path, reference_logits) -> None:
    sd = _fixture_state_dict()
    vm = "vit.vision_tower.vision_model"
    sd[f"{vm}.post_layernorm.weight"] = torch.ones(32)
    sd[f"{vm}.post_layernorm.bias"] = torch.zeros(32)
    sd[f"{vm}.embeddings.position_ids"] = torch.arange(17)[None]
    sd["model.layers.0.attention.rotary_emb.inv_freq"] = torch.ones(4)
    model = load_model(_write(tmp_path / "c", sd))
    torch.testing.assert_close(_logits(model), reference_logits, rtol=0, atol=0)


def test_lora_ranks_are_read_from_plora_a_shapes(tmp_path) -> None:
    sd = _fixture_state_dict()
    for k in list(sd):
        if ".Plora_A." in k:
            r = 4 if ".wqkv." in k else 8
            sd[k] = sd[k][:r].clone()
        elif ".Plora_B." in k:
            r = 4 if ".wqkv." in k else 8
            sd[k] = sd[k][:, :r].clone()
    model = load_model(_write(tmp_path / "c", sd))
    layer = model.model.layers[1]
    assert layer.attention.wqkv.rank == 4 and layer.attention.wqkv.scaling == 4.0  # 16 / 4
    assert layer.feed_forward.w2.rank == 8 and layer.feed_forward.w2.scaling == 1.0


def test_dtype_cast_and_eval_mode() -> None:
    model = load_model(TINY_CKPT, dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    logits = _logits(model)  # bf16 forward on CPU runs and stays close to fp32
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


# -- the real 7B layout, on the meta device -------------------------------------------------


def _official_7b_shapes() -> dict[str, tuple[int, ...]]:
    """Key -> shape of the official checkpoint, written from the architecture doc §5.2."""
    s: dict[str, tuple[int, ...]] = {"model.tok_embeddings.weight": (92544, 4096)}
    lin = {
        "attention.wqkv": (6144, 4096, 8),
        "attention.wo": (4096, 4096, 256),
        "feed_forward.w1": (14336, 4096, 256),
        "feed_forward.w3": (14336, 4096, 256),
        "feed_forward.w2": (4096, 14336, 256),
    }
    for n in range(32):
        p = f"model.layers.{n}"
        s[f"{p}.attention_norm.weight"] = (4096,)
        s[f"{p}.ffn_norm.weight"] = (4096,)
        for name, (out_f, in_f, r) in lin.items():
            s[f"{p}.{name}.weight"] = (out_f, in_f)
            s[f"{p}.{name}.Plora_A.weight"] = (r, in_f)
            s[f"{p}.{name}.Plora_B.weight"] = (out_f, r)
    s["model.norm.weight"] = (4096,)
    s["output.weight"] = (92544, 4096)
    vm = "vit.vision_tower.vision_model"
    s[f"{vm}.embeddings.class_embedding"] = (1024,)
    s[f"{vm}.embeddings.patch_embedding.weight"] = (1024, 3, 14, 14)
    s[f"{vm}.embeddings.position_embedding.weight"] = (577, 1024)
    s[f"{vm}.pre_layrnorm.weight"] = (1024,)
    s[f"{vm}.pre_layrnorm.bias"] = (1024,)
    for n in range(24):
        p = f"{vm}.encoder.layers.{n}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s[f"{p}.self_attn.{proj}.weight"] = (1024, 1024)
            s[f"{p}.self_attn.{proj}.bias"] = (1024,)
        for ln in ("layer_norm1", "layer_norm2"):
            s[f"{p}.{ln}.weight"] = (1024,)
            s[f"{p}.{ln}.bias"] = (1024,)
        s[f"{p}.mlp.fc1.weight"] = (4096, 1024)
        s[f"{p}.mlp.fc1.bias"] = (4096,)
        s[f"{p}.mlp.fc2.weight"] = (1024, 4096)
        s[f"{p}.mlp.fc2.bias"] = (1024,)
    s["vision_proj.0.weight"] = (4096, 4096)
    s["vision_proj.0.bias"] = (4096,)
    s["vision_proj.2.weight"] = (4096, 4096)
    s["vision_proj.2.bias"] = (4096,)
    s["plora_glb_GN"] = (1, 1, 4096)
    s["plora_sub_GN"] = (1, 1, 1, 4096)
    return s


def test_7b_on_meta_has_official_keys_and_parameter_count() -> None:
    model = build_meta_model(ModelConfig())  # defaults = the real 7B, ranks 8 / 256
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    official = _official_7b_shapes()
    assert len(official) == 942  # 547 LLM + 389 ViT + 4 projector + 2 separators
    assert ours == official
    n_params = sum(p.numel() for p in model.parameters())
    expected = sum(torch.Size(shape).numel() for shape in official.values())
    assert n_params == expected
    assert n_params == 8_597_499_904  # doc §1.3: 8.597 B, 17.195 GB in bf16
    assert all(p.is_meta for p in model.parameters())


def test_7b_parameter_groups_agree_with_the_vram_estimator() -> None:
    from ixcdoc.model.plora import PLoRALinear
    from ixcdoc.vram import param_counts

    model = build_meta_model(ModelConfig())
    counts = param_counts(ModelConfig())
    base = sum(m.weight.numel() for m in model.modules() if isinstance(m, PLoRALinear))
    assert counts.decoder_linear == base  # exactly what quant.py stores as NF4
    assert counts.total == sum(p.numel() for p in model.parameters())


class _WritesAMarker:
    """Unpickling this calls open(marker, "w"): proof that code in the checkpoint ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, ...]:
        return (io.open, (str(self.marker), "w"))  # pickled as io.open


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_a_pickle_that_runs_code_is_refused_before_it_runs(tmp_path: Path, zipped: bool) -> None:
    marker = tmp_path / "code-ran"
    sd: dict[str, object] = dict(_fixture_state_dict())
    sd["model.tok_embeddings.weight"] = _WritesAMarker(marker)
    folder = tmp_path / "ckpt"
    folder.mkdir()
    shutil.copy(TINY_CKPT / "config.json", folder / "config.json")
    bin_path = folder / "pytorch_model.bin"
    torch.save(sd, bin_path, _use_new_zipfile_serialization=zipped)
    with pytest.raises(WeightsError) as info:
        load_model(folder)
    assert not marker.exists()  # the check ran before the code did, not after
    assert str(info.value) == (
        f"{bin_path}: holds code, not just tensors (it calls io.open); "
        "refused, nothing in it was run or loaded"
    )
