"""4-bit weights: bitsandbytes NF4 for the base weights of the decoder linears only.

Scope: the base ``weight`` of ``wqkv``, ``wo``, ``w1``, ``w2``, ``w3`` in every decoder layer
(~7.0 of the 8.6 B parameters, so the model drops from ~17.2 GB to ~6 GB). Everything else keeps
the compute dtype, on purpose:

- ``Plora_A`` / ``Plora_B``: small (~0.6 B) and they carry the image adaptation; quantizing a
  low-rank delta adds error relative to its own small magnitude.
- vision tower (0.3 B) and ``vision_proj``: every image token passes through them; errors there
  shift all ~8k image embeddings at once, and they are cheap to keep.
- ``tok_embeddings`` (a lookup, no matmul to speed up) and the untied ``output`` head: the
  head decides the argmax directly, so it is logits-critical.

Quantization happens tensor by tensor while loading (``PLoRALinear4bit.load_base_weight``): the
float weight is moved to the target device, quantized with ``bitsandbytes.functional.
quantize_4bit`` and dropped, so the full-precision model never exists in device memory. This
works on CPU too (bitsandbytes >= 0.45 has CPU 4-bit kernels; tests run there in float32).

Format: NF4, blocks of 64 weights, one fp32 absmax per block, no double quantization: 0.5625
bytes per weight, the figure ``ixcdoc.vram`` plans with. Double quantization (``double_quant``)
would save ~0.3 GB on the 7B at the cost of a second dequantization step per matmul.
"""

from __future__ import annotations

import torch

from ixcdoc.errors import DeviceError
from ixcdoc.model.internlm2 import LinearFactory
from ixcdoc.model.plora import PLoRALinear, lora_scaling

QUANTIZED_LINEARS = ("wqkv", "wo", "w1", "w2", "w3")
BLOCKSIZE = 64
QUANT_TYPE = "nf4"


def _bnb():
    from ixcdoc.verbosity import quiet_bitsandbytes

    quiet_bitsandbytes()  # before the import: the warning is logged while it runs
    try:
        import bitsandbytes as bnb
    except Exception as e:  # ImportError, or a broken native library
        raise DeviceError(
            f"4-bit needs bitsandbytes (pip install 'ixcdoc[quant]'); import failed: {e}"
        ) from None
    return bnb


class PLoRALinear4bit(PLoRALinear):
    """PLoRA linear whose base weight is NF4; LoRA A/B stay in the compute dtype."""

    def __init__(self, *args, double_quant: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Until load_base_weight, ``weight`` is a float placeholder (on meta) so the loader's
        # key/shape check sees the checkpoint's [out, in] shape.
        self.double_quant = double_quant

    def load_base_weight(self, weight: torch.Tensor) -> None:
        """Quantize a float weight [out, in] (on its target device) into ``self.weight``."""
        bnb = _bnb()
        if tuple(weight.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"expected weight {(self.out_features, self.in_features)}, got "
                f"{tuple(weight.shape)}"
            )
        packed, state = bnb.functional.quantize_4bit(
            weight.contiguous(),
            blocksize=BLOCKSIZE,
            compress_statistics=self.double_quant,
            quant_type=QUANT_TYPE,
        )
        self.weight = bnb.nn.Params4bit(
            packed,
            requires_grad=False,
            quant_state=state,
            blocksize=BLOCKSIZE,
            compress_statistics=self.double_quant,
            quant_type=QUANT_TYPE,
            bnb_quantized=True,
        )

    @property
    def is_quantized(self) -> bool:
        return getattr(self.weight, "quant_state", None) is not None

    def base(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., in] -> [..., out] through the NF4 kernel (dequantizes to x's dtype)."""
        if not self.is_quantized:
            raise RuntimeError("PLoRALinear4bit used before load_base_weight()")
        bnb = _bnb()
        return bnb.matmul_4bit(x, self.weight, quant_state=self.weight.quant_state)


def make_linear_4bit(*, double_quant: bool = False) -> LinearFactory:
    """Factory for the decoder's PLoRA linears with NF4 base weights.

    The compute dtype is the dtype of the float weight handed to ``load_base_weight`` (the
    quant state remembers it): bf16 on CUDA, float32 on CPU.
    """
    _bnb()  # fail early, before any weight is read

    def make(name: str, in_features: int, out_features: int, rank: int) -> PLoRALinear:
        if name not in QUANTIZED_LINEARS:
            return PLoRALinear(in_features, out_features, rank, lora_scaling(name, rank))
        return PLoRALinear4bit(
            in_features, out_features, rank, lora_scaling(name, rank), double_quant=double_quant
        )

    return make
