"""ModelConfig from config.json: every field checked, one error naming the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ixcdoc.config import ModelConfig
from ixcdoc.errors import WeightsError

TINY = Path(__file__).parent / "fixtures" / "upstream" / "tiny_ckpt" / "config.json"


def tiny_raw() -> dict[str, Any]:
    return json.loads(TINY.read_text(encoding="utf-8"))


def test_the_tiny_reference_config_is_accepted() -> None:
    cfg = ModelConfig.from_dict(tiny_raw())
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (64, 8, 2)
    assert cfg.rope_theta == 1_000_000.0 and isinstance(cfg.rope_theta, float)
    assert ModelConfig() == ModelConfig.from_dict(
        {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
         "num_key_value_heads": 8, "vocab_size": 92544}
    )  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": -64}, r"hidden_size: expected a whole number >= 1, got -64"),
        ({"hidden_size": "abc"}, r"hidden_size: expected a whole number >= 1, got 'abc'"),
        ({"hidden_size": 64.5}, r"hidden_size: expected a whole number >= 1, got 64.5"),
        ({"num_attention_heads": 0}, r"num_attention_heads: expected a whole number >= 1, got 0"),
        ({"num_hidden_layers": True}, r"num_hidden_layers: expected a whole number >= 1"),
        ({"rms_norm_eps": -1}, r"rms_norm_eps: expected a finite number > 0, got -1"),
        ({"rope_theta": "big"}, r"rope_theta: expected a finite number > 0, got 'big'"),
        ({"torch_dtype": 3}, r"torch_dtype: expected a non-empty string, got 3"),
        ({"bos_token_id": -1}, r"bos_token_id: expected a whole number >= 0, got -1"),
        ({"eos_token_id": 1000}, r"eos_token_id 1000 is not below vocab_size 1000"),
        ({"num_attention_heads": 6}, r"hidden_size 64 is not a multiple of num_attention_heads 6"),
        ({"num_attention_heads": 64, "num_key_value_heads": 64}, r"head dimension 1 is odd"),
        ({"num_key_value_heads": 3}, r"num_attention_heads 8 is not a multiple of num_key_v"),
        ({"vision_config": []}, r"vision_config: expected a JSON object"),
    ],
)
def test_bad_decoder_fields_are_named(change: dict[str, Any], message: str) -> None:
    raw = tiny_raw()
    raw.update(change)
    with pytest.raises(WeightsError, match=r"^config\.json: " + message):
        ModelConfig.from_dict(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden_size": 0}, r"vision_config\.hidden_size: expected a whole number >= 1, got 0"),
        ({"num_attention_heads": 5}, r"vision_config\.hidden_size 32 is not a multiple of"),
        ({"patch_size": 10}, r"vision_config\.image_size 56 is not an even multiple of"),
        ({"hidden_act": "relu"}, r"vision_config\.hidden_act 'relu' is not one of quick_gelu"),
        ({"layer_norm_eps": float("nan")}, r"vision_config\.layer_norm_eps: expected a finite"),
    ],
)
def test_bad_vision_fields_are_named(change: dict[str, Any], message: str) -> None:
    raw = tiny_raw()
    raw["vision_config"].update(change)
    with pytest.raises(WeightsError, match=r"^config\.json: " + message):
        ModelConfig.from_dict(raw)


def test_a_config_that_is_not_an_object_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(WeightsError, match=r"config\.json: expected a JSON object, got list"):
        ModelConfig.from_file(path)
