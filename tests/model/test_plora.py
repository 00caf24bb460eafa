"""PLoRA: the LoRA branch fires exactly at image positions, with the 4KHD scaling rule."""

from __future__ import annotations

import pytest
import torch

from ixcdoc.model.plora import PLoRALinear, lora_scaling


def _layer(scaling: float = 2.0, rank: int = 4) -> PLoRALinear:
    torch.manual_seed(0)
    lin = PLoRALinear(16, 24, rank, scaling)
    with torch.no_grad():
        lin.weight.normal_()
        lin.Plora_A.weight.normal_()
        lin.Plora_B.weight.normal_()
    return lin


def test_scaling_rule() -> None:
    # alpha 16 on wqkv, alpha = rank elsewhere (doc §1.3)
    assert lora_scaling("wqkv", 8) == 2.0
    assert lora_scaling("wqkv", 4) == 4.0
    for name in ("wo", "w1", "w2", "w3"):
        assert lora_scaling(name, 256) == 1.0
        assert lora_scaling(name, 16) == 1.0


def test_all_false_mask_equals_base_linear() -> None:
    lin = _layer()
    x = torch.randn(2, 5, 16)
    base = x @ lin.weight.T
    mask = torch.zeros(2, 5, dtype=torch.bool)
    torch.testing.assert_close(lin(x, mask), base, rtol=0, atol=0)
    torch.testing.assert_close(lin(x, None), base, rtol=0, atol=0)


def test_true_mask_adds_scaled_lora_only_there() -> None:
    lin = _layer(scaling=2.0)
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[0, 1, 1, 0, 0], [1, 0, 0, 0, 1]], dtype=torch.bool)
    base = x @ lin.weight.T
    lora = (x @ lin.Plora_A.weight.T) @ lin.Plora_B.weight.T * 2.0
    expected = torch.where(mask[..., None], base + lora, base)
    torch.testing.assert_close(lin(x, mask), expected, rtol=1e-5, atol=1e-5)
    # all-true mask: base + scaled LoRA everywhere
    full = lin(x, torch.ones(2, 5, dtype=torch.bool))
    torch.testing.assert_close(full, base + lora, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scaling", [1.0, 2.0])
def test_scaling_is_applied(scaling: float) -> None:
    lin = _layer(scaling=scaling)
    x = torch.randn(1, 3, 16)
    on = torch.ones(1, 3, dtype=torch.bool)
    delta = lin(x, on) - lin(x, None)
    lora = (x @ lin.Plora_A.weight.T) @ lin.Plora_B.weight.T
    torch.testing.assert_close(delta, lora * scaling, rtol=1e-4, atol=1e-4)
