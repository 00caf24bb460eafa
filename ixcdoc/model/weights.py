"""Checkpoint loading from a local directory: format discovery, strict key/shape check, meta load.

Supported layouts (the first one found wins, safetensors preferred):

- ``model.safetensors.index.json`` + shards, or a single ``model.safetensors``;
- ``pytorch_model.bin.index.json`` + pickled shards (the official 4KHD release), or a single
  ``pytorch_model.bin``. Pickles are read with ``weights_only=True`` and ``mmap=True``.

Loading builds the model on the ``meta`` device (no memory), checks every key and shape against
the checkpoint, converts tensor by tensor to the target dtype/device (quantizing decoder linears
on the fly for 4-bit) and installs them with ``load_state_dict(assign=True)``. Host RAM thus
peaks near one copy of the weights (memory-mapped sources are paged in, not duplicated).

Strictness: every missing, unexpected and misshapen key is reported in ONE ``WeightsError``.
Harmless extras are ignored (see ``IGNORED_EXTRA``): ``*.rotary_emb.inv_freq`` (recomputed),
``*position_ids`` (HF CLIP buffer, an arange), ``vit.vision_tower.vision_model.post_layernorm.*``
(never used: features are taken before it).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import pickle
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from ixcdoc.config import ModelConfig
from ixcdoc.errors import WeightsError
from ixcdoc.model.internlm2 import LinearFactory, default_linear, flash_attention
from ixcdoc.model.xcomposer import XComposer2

IGNORED_EXTRA: tuple[str, ...] = (
    "*.rotary_emb.inv_freq",
    "*position_ids",
    "vit.vision_tower.vision_model.post_layernorm.*",
)
WQKV_LORA_A = "model.layers.0.attention.wqkv.Plora_A.weight"
OTHER_LORA_A = "model.layers.0.attention.wo.Plora_A.weight"
_MAX_LISTED = 40  # per category; a wholly wrong checkpoint would otherwise print ~900 lines


@dataclass(frozen=True)
class CheckpointFiles:
    """Where a checkpoint's tensors are: format ('safetensors' | 'bin') and shard paths."""

    root: Path
    format: str
    files: tuple[Path, ...]
    index: Path | None = None


def find_checkpoint(path: str | Path) -> CheckpointFiles:
    """Discover the weight files of a local checkpoint directory."""
    root = Path(path)
    if not root.is_dir():
        raise WeightsError(f"{root}: checkpoint directory not found")
    for fmt, index_name, single in (
        ("safetensors", "model.safetensors.index.json", "model.safetensors"),
        ("bin", "pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = root / index_name
        if index.is_file():
            return CheckpointFiles(root, fmt, _shards_from_index(index), index)
        if (root / single).is_file():
            return CheckpointFiles(root, fmt, (root / single,))
    raise WeightsError(
        f"{root}: no weights found (expected model.safetensors[.index.json] or "
        "pytorch_model.bin[.index.json])"
    )


def _shards_from_index(index: Path) -> tuple[Path, ...]:
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise WeightsError(f"{index}: unreadable shard index ({e})") from None
    names = sorted(set(weight_map.values()))
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise WeightsError(f"{index}: shard file(s) listed but not present: {', '.join(missing)}")
    return tuple(index.parent / n for n in names)


class TensorSource:
    """Lazy name -> tensor access over all shards; shapes known without reading data."""

    def __init__(self, ckpt: CheckpointFiles) -> None:
        self.ckpt = ckpt
        self._get: dict[str, Callable[[], torch.Tensor]] = {}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for f in ckpt.files:
            if ckpt.format == "safetensors":
                self._open_safetensors(f)
            else:
                self._open_bin(f)

    def _add(self, name: str, shape: tuple[int, ...], get: Callable[[], torch.Tensor], f: Path):
        if name in self.shapes:
            raise WeightsError(f"{f}: tensor {name!r} appears in more than one shard")
        self.shapes[name] = shape
        self._get[name] = get

    def _open_safetensors(self, f: Path) -> None:
        from safetensors import safe_open

        try:
            handle = safe_open(str(f), framework="pt", device="cpu")
            for name in handle.keys():  # noqa: SIM118 - safe_open is not a dict
                shape = tuple(handle.get_slice(name).get_shape())
                self._add(name, shape, lambda n=name, h=handle: h.get_tensor(n), f)
        except WeightsError:
            raise
        except Exception as e:
            raise WeightsError(f"{f}: cannot read safetensors file ({e})") from None

    def _open_bin(self, f: Path) -> None:
        try:
            try:
                sd = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:
                # Legacy (non-zip) pickles cannot be memory-mapped; read them whole.
                sd = torch.load(f, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise WeightsError(_unpickling_problem(f, e)) from None
        except Exception as e:
            first = (str(e).splitlines() or [type(e).__name__])[0]
            raise WeightsError(f"{f}: cannot read checkpoint shard ({first})") from None
        if not isinstance(sd, dict):
            raise WeightsError(f"{f}: expected a state dict, got {type(sd).__name__}")
        for name, t in sd.items():
            if not isinstance(t, torch.Tensor):
                raise WeightsError(f"{f}: entry {name!r} is not a tensor")
            self._add(name, tuple(t.shape), lambda t=t: t, f)

    def get(self, name: str) -> torch.Tensor:
        """The tensor ``name`` (read on demand)."""
        return self._get[name]()

    def keys(self) -> Iterator[str]:
        return iter(self.shapes)


_REASON = re.compile(r"WeightsUnpickler error: ([^\n]*)")


def _unpickling_problem(f: Path, e: pickle.UnpicklingError) -> str:
    """One line for a refused pickle; PyTorch's own text suggests switching the check off."""
    text = str(e)
    if "Unsupported" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" (it calls {found.group(1)})" if found else ""
        return f"{f}: holds code, not just tensors{what}; refused, nothing in it was run or loaded"
    reason = _REASON.search(text)
    first = reason.group(1) if reason else (text.splitlines() or [type(e).__name__])[0]
    return f"{f}: cannot read checkpoint shard ({first.strip()})"


def is_ignored(name: str) -> bool:
    """True for checkpoint extras that are harmless and skipped (see ``IGNORED_EXTRA``)."""
    return any(fnmatch.fnmatchcase(name, pat) for pat in IGNORED_EXTRA)


def config_with_ranks(cfg: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> ModelConfig:
    """Copy of ``cfg`` with PLoRA ranks read from layer 0's Plora_A shapes (when present)."""
    changes = {}
    if len(shapes.get(WQKV_LORA_A, ())) == 2:
        changes["wqkv_lora_rank"] = shapes[WQKV_LORA_A][0]
    if len(shapes.get(OTHER_LORA_A, ())) == 2:
        changes["lora_rank"] = shapes[OTHER_LORA_A][0]
    return dataclasses.replace(cfg, **changes) if changes else cfg


def build_meta_model(cfg: ModelConfig, make_linear: LinearFactory = default_linear) -> XComposer2:
    """The model with every parameter on the meta device (no memory)."""
    with torch.device("meta"):
        return XComposer2(cfg, make_linear)


def _fmt_shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]"


def _listing(title: str, lines: list[str]) -> list[str]:
    if not lines:
        return []
    out = [f"  {title} ({len(lines)}):"]
    out += [f"    {line}" for line in lines[:_MAX_LISTED]]
    if len(lines) > _MAX_LISTED:
        out.append(f"    ... and {len(lines) - _MAX_LISTED} more")
    return out


def check_keys(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], *, source: str
) -> None:
    """Raise one WeightsError listing every missing, unexpected and misshapen key."""
    missing = [f"{k} {_fmt_shape(s)}" for k, s in expected.items() if k not in found]
    unexpected = [
        f"{k} {_fmt_shape(s)}" for k, s in found.items() if k not in expected and not is_ignored(k)
    ]
    misshapen = [
        f"{k}: expected {_fmt_shape(s)}, got {_fmt_shape(found[k])}"
        for k, s in expected.items()
        if k in found and tuple(found[k]) != tuple(s)
    ]
    if missing or unexpected or misshapen:
        lines = [f"{source}: checkpoint does not match the model architecture"]
        lines += _listing("missing keys", missing)
        lines += _listing("unexpected keys", unexpected)
        lines += _listing("misshapen keys", misshapen)
        raise WeightsError("\n".join(lines))


def expected_shapes(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Checkpoint key -> shape the (meta) model expects."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def load_model(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    quant: str | None = None,
) -> XComposer2:
    """Load a local checkpoint into an ``XComposer2`` in eval mode on ``device``.

    ``dtype`` is the compute dtype of every floating tensor. ``quant='4bit'`` stores the base
    weights of decoder linears as bitsandbytes NF4 (see ``ixcdoc.model.quant``).
    """
    root = Path(path)
    device = torch.device(device)
    cfg = ModelConfig.from_file(root / "config.json")
    ckpt = find_checkpoint(root)
    src = TensorSource(ckpt)
    cfg = config_with_ranks(cfg, src.shapes)

    make_linear = default_linear
    if quant == "4bit":
        from ixcdoc.model import quant as q4

        make_linear = q4.make_linear_4bit()
    elif quant not in (None, "none"):
        raise WeightsError(f"unknown quantization {quant!r} (expected None or '4bit')")

    try:
        model = build_meta_model(cfg, make_linear)
    except ValueError as e:
        raise WeightsError(f"{root / 'config.json'}: {e}") from None
    expected = expected_shapes(model)
    check_keys(expected, src.shapes, source=str(ckpt.index or ckpt.files[0]))

    return _materialize(model, expected, src.get, dtype=dtype, device=device)


def _materialize(
    model: XComposer2,
    names: dict[str, tuple[int, ...]],
    get: Callable[[str], torch.Tensor],
    *,
    dtype: torch.dtype,
    device: torch.device,
) -> XComposer2:
    """Replace every meta parameter by ``get(name)`` cast to dtype/device (4-bit in place)."""
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    for name in names:
        t = get(name)
        t = t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device=device)
        owner, _, leaf = name.rpartition(".")
        mod = modules.get(owner)
        if leaf == "weight" and hasattr(mod, "load_base_weight"):
            mod.load_base_weight(t)  # quantized in place; the float copy is dropped here
        else:
            state[name] = t
    model.load_state_dict(state, strict=False, assign=True)
    leftover = [n for n, p in model.named_parameters() if p.is_meta]
    if leftover:  # an invariant of this function, not a user error
        raise AssertionError(f"parameters left on meta after loading: {leftover[:5]}")
    model.requires_grad_(False)
    model.set_attention_backend(attention_backend(device, dtype))
    return model.eval()


def attention_backend(device: torch.device, dtype: torch.dtype) -> str:
    """The causal prefill's kernel for weights on ``device`` in ``dtype``: flash-attn 2 on CUDA
    in fp16/bf16 when it imports (upstream's own default), else SDPA."""
    half = dtype in (torch.float16, torch.bfloat16)
    return "flash" if device.type == "cuda" and half and flash_attention() is not None else "sdpa"


def random_model(
    cfg: ModelConfig,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
    quant: str | None = None,
    seed: int = 0,
) -> XComposer2:
    """A model of ``cfg``'s shapes with random weights made on ``device`` (benchmarks).

    Linears ~ N(0, 0.02), norms 1: realistic magnitudes, so kernels and memory behave as
    with the real checkpoint. Nothing is read from disk.
    """
    device = torch.device(device)
    make_linear = default_linear
    if quant == "4bit":
        from ixcdoc.model import quant as q4

        make_linear = q4.make_linear_4bit()
    model = build_meta_model(cfg, make_linear)
    expected = expected_shapes(model)
    gen = torch.Generator(device=device).manual_seed(seed)

    def get(name: str) -> torch.Tensor:
        shape = expected[name]
        if name.endswith(".weight") and len(shape) == 1:  # RMSNorm / LayerNorm scales
            return torch.ones(shape, device=device, dtype=dtype)
        t = torch.empty(shape, device=device, dtype=dtype)
        return t.normal_(0.0, 0.02, generator=gen)

    return _materialize(model, expected, get, dtype=dtype, device=device)
