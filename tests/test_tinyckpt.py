"""The tiny checkpoint builder against the upstream fixture checkpoint (layout, shapes, files)."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch

from ixcdoc.config import ModelConfig
from ixcdoc.tinyckpt import (
    DEFAULT_LOOP_CYCLE,
    SPECIAL_TOKENS,
    checkpoint_shapes,
    write_tiny_checkpoint,
)
from ixcdoc.tokenizer import TURN_END, Tokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "upstream" / "tiny_ckpt"
TOKENIZER_FILES = ("added_tokens.json", "tokenizer_config.json", "special_tokens_map.json")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _load_bin(folder: Path) -> dict[str, torch.Tensor]:
    index = _read_json(folder / "pytorch_model.bin.index.json")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        part = torch.load(folder / shard, map_location="cpu", weights_only=True)
        assert all(index["weight_map"][k] == shard for k in part), shard
        state.update(part)
    assert set(state) == set(index["weight_map"])
    return state


def _load_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = _read_json(folder / "model.safetensors.index.json")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(index["weight_map"].values())):
        part = load_file(str(folder / shard))
        assert all(index["weight_map"][k] == shard for k in part), shard
        state.update(part)
    assert set(state) == set(index["weight_map"])
    return state


@pytest.fixture(scope="module")
def fixture_state() -> dict[str, torch.Tensor]:
    return _load_bin(FIXTURE)


@pytest.fixture(scope="module")
def tiny_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_checkpoint(tmp_path_factory.mktemp("bin") / "ckpt")


def test_keys_and_shapes_equal_the_fixture(
    tiny_bin: Path, fixture_state: dict[str, torch.Tensor]
) -> None:
    state = _load_bin(tiny_bin)
    assert set(state) == set(fixture_state)
    for key, tensor in fixture_state.items():
        assert state[key].shape == tensor.shape, key
        assert state[key].dtype == torch.float32, key
    assert not any("post_layernorm" in k for k in state)


def test_shape_table_equals_the_fixture(fixture_state: dict[str, torch.Tensor]) -> None:
    shapes = checkpoint_shapes()
    assert shapes == {k: tuple(v.shape) for k, v in fixture_state.items()}


def test_index_json_equals_the_fixture(tiny_bin: Path) -> None:
    mine = _read_json(tiny_bin / "pytorch_model.bin.index.json")
    assert mine == _read_json(FIXTURE / "pytorch_model.bin.index.json")
    for shard in set(mine["weight_map"].values()):
        assert (tiny_bin / shard).is_file()


def test_config_mirrors_the_fixture(tiny_bin: Path) -> None:
    assert _read_json(tiny_bin / "config.json") == _read_json(FIXTURE / "config.json")
    gen = _read_json(tiny_bin / "generation_config.json")
    assert gen == _read_json(FIXTURE / "generation_config.json")
    cfg = ModelConfig.from_file(tiny_bin / "config.json")
    assert (cfg.hidden_size, cfg.vocab_size, cfg.tile, cfg.merged_dim) == (64, 1000, 56, 128)


def test_tokenizer_files_mirror_the_fixture(tiny_bin: Path) -> None:
    for name in TOKENIZER_FILES:
        assert _read_json(tiny_bin / name) == _read_json(FIXTURE / name), name


def test_tokenizer_has_specials_last_and_round_trips(tiny_bin: Path) -> None:
    tok = Tokenizer.from_dir(tiny_bin)
    assert tok.vocab_size == 1000
    assert [tok.id_to_piece(i) for i in range(994, 1000)] == list(SPECIAL_TOKENS)
    assert (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)
    assert tok.stop_ids == (2, 998)
    assert tok.id_to_piece(3) == "<0x00>"  # byte fallback right after the control pieces
    text = "Please read the invoice total: 1,234.50 €\n中文 😀  two  spaces"
    ids = tok.encode(text, bos=False)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8"))  # real merges, not only bytes
    ids = tok.encode(f"x{TURN_END}\n", bos=False)
    assert ids[-2] == 998 and tok.decode(ids[-1:]) == "\n"  # newline after a special is kept


def test_other_vocab_size_moves_the_specials(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "v", tokenizer_vocab=1200, shards=1)
    tok = Tokenizer.from_dir(path)
    assert tok.vocab_size == 1200
    assert tok.stop_ids == (2, 1198)
    assert _read_json(path / "added_tokens.json")["[UNUSED_TOKEN_146]"] == 1199
    assert _read_json(path / "config.json")["vocab_size"] == 1200
    state = torch.load(path / "pytorch_model.bin", weights_only=True)
    assert state["output.weight"].shape == (1200, 64)


def test_safetensors_variant_has_the_same_tensors(tmp_path: Path, tiny_bin: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "st", fmt="safetensors")
    assert not list(path.glob("*.bin"))
    index = _read_json(path / "model.safetensors.index.json")
    assert index["metadata"]["total_size"] == 1089024
    st, pt = _load_safetensors(path), _load_bin(tiny_bin)
    assert set(st) == set(pt)
    for key in pt:
        assert torch.equal(st[key], pt[key]), key


def test_single_shard_files(tmp_path: Path) -> None:
    a = write_tiny_checkpoint(tmp_path / "a", fmt="safetensors", shards=1)
    assert (a / "model.safetensors").is_file() and not (a / "model.safetensors.index.json").exists()
    b = write_tiny_checkpoint(tmp_path / "b", fmt="bin", shards=1)
    assert (b / "pytorch_model.bin").is_file() and not (b / "pytorch_model.bin.index.json").exists()


@pytest.mark.parametrize("shards", [3, 6])
def test_more_shards_than_layers(tmp_path: Path, shards: int) -> None:
    path = write_tiny_checkpoint(tmp_path / "s", shards=shards)
    index = _read_json(path / "pytorch_model.bin.index.json")
    used = set(index["weight_map"].values())
    assert used == {f"pytorch_model-{i:05d}-of-{shards:05d}.bin" for i in range(1, shards + 1)}
    assert set(_load_bin(path)) == set(checkpoint_shapes())


def test_bigger_sizes_follow_the_table(tmp_path: Path) -> None:
    sizes = dict(hidden=96, layers=3, heads=6, kv_heads=3, intermediate=80, lora_rank=4)
    path = write_tiny_checkpoint(tmp_path / "big", tile=28, vision_hidden=16, **sizes)
    state = _load_bin(path)
    assert state["model.layers.2.attention.wqkv.weight"].shape == ((6 + 2 * 3) * 16, 96)
    assert state["model.layers.0.feed_forward.w2.Plora_A.weight"].shape == (4, 80)
    assert state["vit.vision_tower.vision_model.embeddings.position_embedding.weight"].shape == (
        5,
        16,
    )
    assert state["plora_sub_GN"].shape == (1, 1, 1, 64)
    assert state["vision_proj.0.weight"].shape == (96, 64)


def test_init_scales(tiny_bin: Path) -> None:
    state = _load_bin(tiny_bin)
    for key, t in state.items():
        assert torch.isfinite(t).all(), key
        assert t.abs().max() > 0, key  # nothing is all zeros: Plora_B and GN included
    norm = state["model.norm.weight"]
    assert 0.8 < norm.mean() < 1.2 and norm.std() > 0.01
    assert 0.05 < state["model.layers.0.attention.wo.weight"].std() < 0.2
    assert state["plora_glb_GN"].std() > 0.2


def test_seed_is_deterministic(tmp_path: Path, tiny_bin: Path) -> None:
    same = _load_bin(write_tiny_checkpoint(tmp_path / "same", seed=0))
    other = _load_bin(write_tiny_checkpoint(tmp_path / "other", seed=1))
    ref = _load_bin(tiny_bin)
    assert all(torch.equal(same[k], ref[k]) for k in ref)
    assert not torch.equal(other["output.weight"], ref["output.weight"])


def test_dtype_is_written(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "bf16", dtype=torch.bfloat16, shards=1)
    assert _read_json(path / "config.json")["torch_dtype"] == "bfloat16"
    state = torch.load(path / "pytorch_model.bin", weights_only=True)
    assert {t.dtype for t in state.values()} == {torch.bfloat16}


def test_post_hook_edits_the_state(tmp_path: Path) -> None:
    def drop(state: dict[str, torch.Tensor]) -> None:
        del state["plora_sub_GN"]

    path = write_tiny_checkpoint(tmp_path / "h", post_hook=drop)
    index = _read_json(path / "pytorch_model.bin.index.json")
    assert "plora_sub_GN" not in index["weight_map"]
    assert "plora_sub_GN" not in _load_bin(path)


def test_bad_sizes_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kv_heads"):
        write_tiny_checkpoint(tmp_path / "x", heads=8, kv_heads=3)
    with pytest.raises(ValueError, match="fmt"):
        write_tiny_checkpoint(tmp_path / "x", fmt="gguf")
    with pytest.raises(ValueError, match="even"):
        write_tiny_checkpoint(tmp_path / "x", tile=42)


def test_builder_does_not_import_the_model_code() -> None:
    source = (Path(__file__).parents[1] / "ixcdoc" / "tinyckpt.py").read_text(encoding="utf-8")
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module or "")
    assert not any(name.startswith("ixcdoc") for name in imported), imported


# -- an independent text-only forward (doc §1.2, §5.3) to check the steering options -----------


def _text_logits(state: dict[str, torch.Tensor], cfg: dict, ids: list[int]) -> torch.Tensor:
    """Logits [S, V] of a text-only prompt (PLoRA is inactive for text tokens)."""
    hidden, n_heads, n_kv = (
        cfg["hidden_size"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
    )
    hd, eps, seq = hidden // n_heads, cfg["rms_norm_eps"], len(ids)

    def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def rope(x: torch.Tensor) -> torch.Tensor:  # x: [S, heads, hd]
        inv = 1.0 / (cfg["rope_theta"] ** (torch.arange(0, hd, 2).float() / hd))
        freqs = torch.outer(torch.arange(seq).float(), inv)
        cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
        x1, x2 = x[..., : hd // 2], x[..., hd // 2 :]
        return x * cos[:, None] + torch.cat([-x2, x1], -1) * sin[:, None]

    x = state["model.tok_embeddings.weight"][ids]  # [S, H]
    mask = torch.full((seq, seq), float("-inf")).triu(1)
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}"
        h = rms(x, state[f"{p}.attention_norm.weight"])
        qkv = (h @ state[f"{p}.attention.wqkv.weight"].T).view(seq, n_kv, -1, hd)
        q = rope(qkv[:, :, :-2].reshape(seq, n_heads, hd))
        k = rope(qkv[:, :, -2]).repeat_interleave(n_heads // n_kv, dim=1)
        v = qkv[:, :, -1].repeat_interleave(n_heads // n_kv, dim=1)
        att = (q.transpose(0, 1) @ k.transpose(0, 1).transpose(1, 2)) / math.sqrt(hd) + mask
        out = (att.softmax(-1) @ v.transpose(0, 1)).transpose(0, 1).reshape(seq, hidden)
        x = x + out @ state[f"{p}.attention.wo.weight"].T
        h = rms(x, state[f"{p}.ffn_norm.weight"])
        gate = torch.nn.functional.silu(h @ state[f"{p}.feed_forward.w1.weight"].T)
        x = (
            x
            + (gate * (h @ state[f"{p}.feed_forward.w3.weight"].T))
            @ state[f"{p}.feed_forward.w2.weight"].T
        )
    return rms(x, state["model.norm.weight"]) @ state["output.weight"].T


def _greedy(path: Path, prompt: str, steps: int = 7) -> list[int]:
    cfg = _read_json(path / "config.json")
    state = {k: v.float() for k, v in _load_bin(path).items()}
    ids = Tokenizer.from_dir(path).encode(prompt)
    out: list[int] = []
    for _ in range(steps):
        nxt = int(_text_logits(state, cfg, ids + out)[-1].argmax())
        out.append(nxt)
    return out


PROMPTS = [
    "[UNUSED_TOKEN_146]user\nRead the page.[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n"
]


@pytest.mark.parametrize("seed", [0, 3])
def test_loop_makes_greedy_output_cycle(tmp_path: Path, seed: int) -> None:
    path = write_tiny_checkpoint(tmp_path / "loop", seed=seed, loop=True)
    c = list(DEFAULT_LOOP_CYCLE)
    assert _greedy(path, PROMPTS[0]) == (c * 3)[:7]


def test_loop_with_a_custom_cycle(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "loop2", loop=[400, 500])
    assert _greedy(path, "anything at all", steps=5) == [400, 500, 400, 500, 400]


def test_eos_first(tmp_path: Path) -> None:
    path = write_tiny_checkpoint(tmp_path / "eos", eos_first=True, dtype="bfloat16")
    assert _greedy(path, PROMPTS[0], steps=2) == [2, 2]


def test_unsteered_model_is_not_a_cycle(tiny_bin: Path) -> None:
    out = _greedy(tiny_bin, PROMPTS[0])
    assert out != (list(DEFAULT_LOOP_CYCLE) * 3)[:7]
    assert out[0] != 2


def test_reference_forward_matches_the_upstream_logits() -> None:
    """Sanity check of the test's own forward: text-only prompt B prefix of the fixture."""
    manifest = _read_json(FIXTURE.parent / "tiny" / "manifest.json")
    case = next(c for c in manifest["chat"] if c["prompt_id"] == "B")
    first = case["segments"][0]
    logits = torch.load(FIXTURE.parent / "tiny" / "portrait_300x900_hd1_promptB_logits.pt")
    state = {k: v.float() for k, v in _load_bin(FIXTURE).items()}
    mine = _text_logits(state, _read_json(FIXTURE / "config.json"), first["ids"])
    assert torch.allclose(mine, logits[: first["length"]], atol=1e-4)
