"""Vision tower: same maths as transformers' CLIPVisionModel (layer -1, before post-LN)."""

from __future__ import annotations

import pytest
import torch

from ixcdoc.config import VisionConfig
from ixcdoc.model.clip import VisionTower

CFG = VisionConfig(
    image_size=56,
    patch_size=14,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
)


def _random_tower() -> VisionTower:
    torch.manual_seed(0)
    tower = VisionTower(CFG)
    with torch.no_grad():
        for p in tower.parameters():
            p.normal_(0, 0.2)
    return tower.eval()


def test_builds_on_meta_with_hf_key_names() -> None:
    with torch.device("meta"):
        tower = VisionTower(VisionConfig())
    keys = set(tower.state_dict())
    assert all(p.is_meta for p in tower.parameters())
    assert "vision_tower.vision_model.embeddings.class_embedding" in keys
    assert "vision_tower.vision_model.pre_layrnorm.weight" in keys
    assert "vision_tower.vision_model.encoder.layers.23.mlp.fc2.bias" in keys
    assert not any("post_layernorm" in k for k in keys)
    assert len(keys) == 389  # doc §5.2: ViT keys without post-LN and position_ids


def test_features_drop_cls_and_match_transformers() -> None:
    transformers = pytest.importorskip("transformers")
    tower = _random_tower()
    hf_cfg = transformers.CLIPVisionConfig(
        image_size=CFG.image_size,
        patch_size=CFG.patch_size,
        hidden_size=CFG.hidden_size,
        intermediate_size=CFG.intermediate_size,
        num_hidden_layers=CFG.num_hidden_layers,
        num_attention_heads=CFG.num_attention_heads,
        layer_norm_eps=CFG.layer_norm_eps,
        hidden_act=CFG.hidden_act,
        num_channels=3,
    )
    hf = transformers.CLIPVisionModel(hf_cfg).eval()
    # transformers 4.x keys start with "vision_model.", 5.x dropped that level.
    v4 = "vision_model.pre_layrnorm.weight" in hf.state_dict()
    prefix = "vision_tower." if v4 else "vision_tower.vision_model."
    sd = {k.removeprefix(prefix): v for k, v in tower.state_dict().items()}
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected
    assert all("post_layernorm" in k or "position_ids" in k for k in missing)
    x = torch.randn(3, 3, 56, 56)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True).hidden_states[-1][:, 1:]
        ours = tower(x)
    assert ours.shape == (3, 16, 32)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_wrong_crop_size_is_an_error() -> None:
    tower = _random_tower()
    with pytest.raises(ValueError, match="16 patches per crop"):
        tower(torch.randn(1, 3, 70, 70))
