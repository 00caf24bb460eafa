"""Tiny random checkpoints in the official IXC2-4KHD layout, for tests and ``doctor --selftest``.

``write_tiny_checkpoint`` writes what the real repository holds (config.json,
generation_config.json, sharded weights with an index, tokenizer.model and the tokenizer JSON
files) with tiny sizes and random weights. The key/shape table below is written from the
architecture doc (§5.2) on purpose, without importing ``ixcdoc.model``, so that the builder and
the loader check each other.

The tokenizer is a SentencePiece BPE model trained in-process with the settings of the upstream
reference fixture (byte fallback, identity normalizer, no dummy prefix, whitespace kept) and
``[UNUSED_TOKEN_141..146]`` moved to the last six ids, as in the real vocabulary. Training runs once
per vocabulary size and process.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

UNK, BOS, EOS = "<unk>", "<s>", "</s>"
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = tuple(f"[UNUSED_TOKEN_{i}]" for i in range(141, 147))
N_BYTE_PIECES = 256
# First ids after <unk>, <s>, </s> and the 256 byte pieces: ordinary BPE pieces in any vocabulary.
DEFAULT_LOOP_CYCLE = (259, 260, 261)

# Random-init scales, as in the upstream reference fixture: large enough that every weight
# (norm gains, PLoRA B, separators) moves the outputs well above test tolerances.
_STD_LINEAR = 0.1
_STD_LORA_B = 0.05
_STD_BIAS = 0.05
_STD_NORM = 0.1  # norm weights are 1 + N(0, 0.1): a loader that drops them fails the tests
_STD_PATCH = 0.05
_STD_GN = 0.5
# loop / bias_token shaping: one residual direction dominates the layers' output (O(1) per dim).
_STEER_EMBED = 40.0
_STEER_HEAD = 10.0

# How a person tries one (the README, the no-GPU error, ``doctor`` and the quick start name
# these): the folder ``doctor --selftest --keep`` fills, and a generation cap that makes each
# (random) answer take seconds instead of running to the task's full length.
TRY_FOLDER = "tiny-model"
TRY_MAX_NEW_TOKENS = 16


def keep_command(folder: str = TRY_FOLDER) -> str:
    """The command that builds a tiny random model and keeps it in ``folder``."""
    import shlex

    return f"ixcdoc doctor --selftest --keep {shlex.quote(folder)}"


def try_options(folder: str = TRY_FOLDER) -> str:
    """The options that run any model command on a kept tiny model, on the CPU, in seconds."""
    import shlex

    return f"--model {shlex.quote(folder)} --device cpu --max-new-tokens {TRY_MAX_NEW_TOKENS}"


_PROTO_PIECES = 1  # ModelProto.pieces
_PIECE_TYPE = 3  # SentencePiece.type
_USER_DEFINED = 4


# -- tokenizer ---------------------------------------------------------------------------------

_WORDS = """
the a an of and to in is it that this with for on as at by from be are was were or not no yes
image picture photo page document scan text line word letter number table chart figure column
row cell title caption header footer paragraph section list item note label value axis legend
red green blue black white gray dark light bright left right top bottom middle center corner
small large tall wide long short thick thin first second third last next previous total sum
describe read write written show shows what which where when who how why please answer briefly
detail details question assistant user system model language vision token tokens embedding
patch patches tile tiles crop crops grid global local merge newline separator resolution pixel
pixels transform projection attention layer layers head heads weight weights tensor shape size
invoice receipt date amount price name address phone email account report summary data year
month day time hour meeting contract signature stamp form field check box paid due balance
one two three four five six seven eight nine ten hundred thousand million percent ratio
you are an ai whose internlm xcomposer multi modality conversational developed shanghai
laboratory designed helpful honest harmless can understand communicate fluently chosen such
english capable comprehending articulating responses effectively based provided
""".split()
_SYLLABLES = "ka lo mi tren sha po rid ux vel don qua zim bre sto ne gar fel tu wi yo".split()
_EXTRA = [
    "浦语·灵笔 上海人工智能实验室 中文 文档 图片 表格 标题 日期 金额",
    '(1) [2] {3} <4> 5.0% $6,789.01 #10 a/b c-d e_f g+h=i j*k ~l @m & n | o: p; q! r? \'s "t"',
    "0123456789 2024-04-18 12:30 3.14159 1,000,000",
    "    indented code\n\ttabbed\n\nblank lines  and  double  spaces",
]


def _corpus() -> list[str]:
    """A deterministic training corpus: template words, the meta instruction, pseudo-words."""
    rng = random.Random(20240418)
    pseudo = ["".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(400)]
    lines = list(_EXTRA)
    for _ in range(1500):
        words = [
            rng.choice(pseudo if rng.random() < 0.15 else _WORDS) for _ in range(rng.randint(4, 14))
        ]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        lines.append(" ".join(words) + rng.choice([".", ",", "?", ":", "", "\n"]))
    return lines


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def _proto_fields(buf: bytes) -> list[tuple[int, int, bytes]]:
    """Split a protobuf message into (field number, varint value or 0, raw entry bytes)."""
    out: list[tuple[int, int, bytes]] = []
    i = 0
    while i < len(buf):
        start = i
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        value = 0
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 1:
            i += 8
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = i, i + size  # value: offset of the payload
        elif wire == 5:
            i += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, value, buf[start:i]))
    return out


def _piece_type(raw_entry: bytes) -> int:
    """The type of one serialized ``pieces`` entry (1 = NORMAL when absent)."""
    _, i = _varint(raw_entry, 0)
    size, i = _varint(raw_entry, i)
    payload = raw_entry[i : i + size]
    for number, value, _ in _proto_fields(payload):
        if number == _PIECE_TYPE:
            return value
    return 1


@lru_cache(maxsize=4)
def tokenizer_model_bytes(vocab_size: int = 1000) -> bytes:
    """A serialized SentencePiece BPE model, trained once per vocabulary size and process."""
    import sentencepiece as spm

    writer = io.BytesIO()
    try:
        _train(spm, writer, vocab_size)
    except RuntimeError as e:  # e.g. more pieces asked than the corpus can give
        raise ValueError(f"cannot train a tokenizer with {vocab_size} pieces: {e}") from None
    # The trainer puts user-defined symbols right after the control pieces (ids 3..8); the real
    # InternLM2 vocabulary has them last. Reorder the serialized pieces (wire format, no protobuf).
    model = writer.getvalue()
    entries = _proto_fields(model)
    pieces = [raw for number, _, raw in entries if number == _PROTO_PIECES]
    rest = [raw for number, _, raw in entries if number != _PROTO_PIECES]
    user = [raw for raw in pieces if _piece_type(raw) == _USER_DEFINED]
    normal = [raw for raw in pieces if _piece_type(raw) != _USER_DEFINED]
    return b"".join(normal + user + rest)


def _train(spm: Any, writer: io.BytesIO, vocab_size: int) -> None:
    """Train with the settings found in the upstream fixture's tokenizer.model trainer_spec."""
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_corpus()),
        model_writer=writer,
        model_type="bpe",
        vocab_size=vocab_size,
        character_coverage=1.0,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        num_threads=1,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        byte_fallback=True,
        normalization_rule_name="identity",
        add_dummy_prefix=False,
        remove_extra_whitespaces=False,
        user_defined_symbols=list(SPECIAL_TOKENS),
        unk_id=UNK_ID,
        bos_id=BOS_ID,
        eos_id=EOS_ID,
        pad_id=-1,
        minloglevel=2,
    )


def _added_token(content: str) -> dict[str, Any]:
    return {
        "content": content,
        "lstrip": False,
        "normalized": False,
        "rstrip": False,
        "single_word": False,
        "special": True,
    }


def write_tokenizer(path: Path, *, vocab_size: int = 1000) -> None:
    """Write tokenizer.model and the upstream tokenizer JSON files into folder path."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "tokenizer.model").write_bytes(tokenizer_model_bytes(vocab_size))
    first = vocab_size - len(SPECIAL_TOKENS)
    special_ids = {tok: first + i for i, tok in enumerate(SPECIAL_TOKENS)}
    decoder = {str(UNK_ID): UNK, str(BOS_ID): BOS, str(EOS_ID): EOS}
    decoder.update({str(i): tok for tok, i in special_ids.items()})
    config = {
        "add_bos_token": True,
        "add_eos_token": False,
        "added_tokens_decoder": {k: _added_token(v) for k, v in decoder.items()},
        "additional_special_tokens": list(SPECIAL_TOKENS),
        "auto_map": {"AutoTokenizer": ["tokenization_internlm2.InternLM2Tokenizer", None]},
        "bos_token": BOS,
        "clean_up_tokenization_spaces": False,
        "eos_token": EOS,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": EOS,
        "tokenizer_class": "InternLM2Tokenizer",
        "unk_token": UNK,
    }
    special_map = {
        "additional_special_tokens": list(SPECIAL_TOKENS),
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": EOS,
        "unk_token": UNK,
    }
    _write_json(path / "added_tokens.json", special_ids)
    _write_json(path / "tokenizer_config.json", config)
    _write_json(path / "special_tokens_map.json", special_map)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# -- key / shape table -------------------------------------------------------------------------

VIT = "vit.vision_tower.vision_model"


def checkpoint_shapes(
    *,
    vocab: int = 1000,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 8,
    kv_heads: int = 2,
    intermediate: int = 128,
    vision_hidden: int = 32,
    vision_intermediate: int = 64,
    vision_layers: int = 2,
    tile: int = 56,
    patch: int = 14,
    channels: int = 3,
    wqkv_rank: int = 8,
    lora_rank: int = 16,
) -> dict[str, tuple[int, ...]]:
    """Every key of the official checkpoint with its shape, for the given sizes (doc §5.2)."""
    head_dim = hidden // heads
    qkv_out = (heads + 2 * kv_heads) * head_dim  # packed [kv group][q.., k, v][head_dim]
    merged = 4 * vision_hidden  # the 2x2 token merge concatenates four ViT features
    n_pos = (tile // patch) ** 2 + 1  # patches + CLS

    shapes: dict[str, tuple[int, ...]] = {"model.tok_embeddings.weight": (vocab, hidden)}

    def plora(prefix: str, out_f: int, in_f: int, rank: int) -> None:
        shapes[f"{prefix}.weight"] = (out_f, in_f)
        shapes[f"{prefix}.Plora_A.weight"] = (rank, in_f)
        shapes[f"{prefix}.Plora_B.weight"] = (out_f, rank)

    for n in range(layers):
        p = f"model.layers.{n}"
        shapes[f"{p}.attention_norm.weight"] = (hidden,)
        shapes[f"{p}.ffn_norm.weight"] = (hidden,)
        plora(f"{p}.attention.wqkv", qkv_out, hidden, wqkv_rank)
        plora(f"{p}.attention.wo", hidden, heads * head_dim, lora_rank)
        plora(f"{p}.feed_forward.w1", intermediate, hidden, lora_rank)
        plora(f"{p}.feed_forward.w3", intermediate, hidden, lora_rank)
        plora(f"{p}.feed_forward.w2", hidden, intermediate, lora_rank)
    shapes["model.norm.weight"] = (hidden,)
    shapes["output.weight"] = (vocab, hidden)

    shapes[f"{VIT}.embeddings.class_embedding"] = (vision_hidden,)
    shapes[f"{VIT}.embeddings.patch_embedding.weight"] = (vision_hidden, channels, patch, patch)
    shapes[f"{VIT}.embeddings.position_embedding.weight"] = (n_pos, vision_hidden)
    shapes[f"{VIT}.pre_layrnorm.weight"] = (vision_hidden,)  # sic: HF spells it "layrnorm"
    shapes[f"{VIT}.pre_layrnorm.bias"] = (vision_hidden,)
    for n in range(vision_layers):
        p = f"{VIT}.encoder.layers.{n}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes[f"{p}.self_attn.{proj}.weight"] = (vision_hidden, vision_hidden)
            shapes[f"{p}.self_attn.{proj}.bias"] = (vision_hidden,)
        for norm in ("layer_norm1", "layer_norm2"):
            shapes[f"{p}.{norm}.weight"] = (vision_hidden,)
            shapes[f"{p}.{norm}.bias"] = (vision_hidden,)
        shapes[f"{p}.mlp.fc1.weight"] = (vision_intermediate, vision_hidden)
        shapes[f"{p}.mlp.fc1.bias"] = (vision_intermediate,)
        shapes[f"{p}.mlp.fc2.weight"] = (vision_hidden, vision_intermediate)
        shapes[f"{p}.mlp.fc2.bias"] = (vision_hidden,)
    # No post_layernorm: the real checkpoint lacks it (features are taken before it).

    shapes["vision_proj.0.weight"] = (hidden, merged)
    shapes["vision_proj.0.bias"] = (hidden,)
    shapes["vision_proj.2.weight"] = (hidden, hidden)
    shapes["vision_proj.2.bias"] = (hidden,)
    shapes["plora_glb_GN"] = (1, 1, merged)
    shapes["plora_sub_GN"] = (1, 1, 1, merged)
    return shapes


def _init_std(key: str) -> tuple[float, float]:
    """(mean, std) of the random init for one key."""
    if key in ("plora_glb_GN", "plora_sub_GN"):
        return 0.0, _STD_GN
    if key.endswith("Plora_B.weight"):
        return 0.0, _STD_LORA_B
    if "norm" in key or "layrnorm" in key:
        return (1.0, _STD_NORM) if key.endswith("weight") else (0.0, _STD_BIAS)
    if key.endswith("patch_embedding.weight"):
        return 0.0, _STD_PATCH
    if key.endswith(".bias"):
        return 0.0, _STD_BIAS
    return 0.0, _STD_LINEAR


# -- sharding ----------------------------------------------------------------------------------


def _shard_of(keys: Sequence[str], layers: int, shards: int) -> dict[str, int]:
    """Assign keys to shards: decoder layers spread in order, embeddings first, the rest last.

    With 2 layers and 2 shards this is the fixture's split: tok_embeddings and layer 0 in the
    first shard, layer 1, the final norm, the head, the ViT and the projector in the second.
    """
    if shards <= layers:

        def unit(key: str) -> int:
            if key.startswith("model.layers."):
                return int(key.split(".")[2])
            return 0 if key == "model.tok_embeddings.weight" else layers - 1

        n_units = layers
    else:  # more shards than layers: split the non-layer groups out too

        def unit(key: str) -> int:
            if key == "model.tok_embeddings.weight":
                return 0
            if key.startswith("model.layers."):
                return 1 + int(key.split(".")[2])
            if key in ("model.norm.weight", "output.weight"):
                return layers + 1
            return layers + 2 if key.startswith("vit.") else layers + 3

        n_units = layers + 4
        if shards > n_units:
            raise ValueError(f"shards={shards} is more than the {n_units} groups of weights")
    return {k: unit(k) * shards // n_units for k in keys}


# -- the builder -------------------------------------------------------------------------------


def write_tiny_checkpoint(
    path: Path,
    *,
    seed: int = 0,
    fmt: str = "bin",
    shards: int = 2,
    tile: int = 56,
    patch: int = 14,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 8,
    kv_heads: int = 2,
    intermediate: int = 128,
    vision_hidden: int = 32,
    vision_intermediate: int = 64,
    vision_layers: int = 2,
    vision_heads: int = 4,
    wqkv_rank: int = 8,
    lora_rank: int = 16,
    dtype: torch.dtype | str = "float32",
    tokenizer_vocab: int = 1000,
    max_length: int = 16384,
    loop: bool | Sequence[int] = False,
    eos_first: bool = False,
    bias_token: int | None = None,
    post_hook: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor] | None] | None = None,
) -> Path:
    """Write a tiny random checkpoint in the official layout into folder path; return path.

    ``loop=True`` (or a sequence of token ids) shapes the embeddings and the LM head so that
    greedy decoding repeats ``DEFAULT_LOOP_CYCLE`` (or the given cycle) after any prompt;
    ``eos_first=True`` makes every greedy step, the first one included, pick EOS; ``bias_token``
    does the same for any id. ``post_hook`` gets the final state dict (key -> tensor) and may
    edit it in place or return a new one, e.g. to drop or reshape a key.
    """
    import torch

    if fmt not in ("bin", "safetensors"):
        raise ValueError(f"fmt must be 'bin' or 'safetensors', got {fmt!r}")
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    checks = [
        (hidden % heads == 0, f"hidden={hidden} is not a multiple of heads={heads}"),
        (heads % kv_heads == 0, f"heads={heads} is not a multiple of kv_heads={kv_heads}"),
        (vision_hidden % vision_heads == 0, "vision_hidden must be a multiple of vision_heads"),
        (tile % patch == 0, f"tile={tile} is not a multiple of patch={patch}"),
        ((tile // patch) % 2 == 0, "tile // patch must be even for the 2x2 token merge"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not isinstance(torch_dtype, torch.dtype) or not torch_dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating torch dtype, got {dtype!r}")
    dtype_name = str(torch_dtype).removeprefix("torch.")

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer_vocab
    shapes = checkpoint_shapes(
        vocab=vocab,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        vision_hidden=vision_hidden,
        vision_intermediate=vision_intermediate,
        vision_layers=vision_layers,
        tile=tile,
        patch=patch,
        wqkv_rank=wqkv_rank,
        lora_rank=lora_rank,
    )

    gen = torch.Generator().manual_seed(seed)
    state: dict[str, torch.Tensor] = {}
    for key, shape in shapes.items():
        mean, std = _init_std(key)
        state[key] = torch.randn(shape, generator=gen) * std + mean

    if eos_first:
        if bias_token is not None and bias_token != EOS_ID:
            raise ValueError("eos_first and bias_token disagree")
        bias_token = EOS_ID
    cycle: tuple[int, ...] = ()
    if loop is not False:
        cycle = DEFAULT_LOOP_CYCLE if loop is True else tuple(int(t) for t in loop)  # type: ignore[arg-type]
        if bias_token is not None:
            raise ValueError("loop cannot be combined with eos_first / bias_token")
    _steer(state, vocab=vocab, hidden=hidden, cycle=cycle, bias_token=bias_token)

    state = {k: v.to(torch_dtype).contiguous() for k, v in state.items()}
    if post_hook is not None:
        replaced = post_hook(state)
        if replaced is not None:
            state = replaced

    _write_config(
        path,
        vocab=vocab,
        hidden=hidden,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate=intermediate,
        max_length=max_length,
        dtype_name=dtype_name,
        vision={
            "image_size": tile,
            "patch_size": patch,
            "hidden_size": vision_hidden,
            "intermediate_size": vision_intermediate,
            "num_hidden_layers": vision_layers,
            "num_attention_heads": vision_heads,
            "layer_norm_eps": 1e-05,
            "hidden_act": "quick_gelu",
            "num_channels": 3,
        },
    )
    write_tokenizer(path, vocab_size=vocab)
    _write_weights(path, state, fmt=fmt, shards=shards, layers=layers)
    return path


def _steer(
    state: dict[str, torch.Tensor],
    *,
    vocab: int,
    hidden: int,
    cycle: tuple[int, ...],
    bias_token: int | None,
) -> None:
    """Shape tok_embeddings and output so that greedy decoding follows a fixed pattern.

    Text embeddings get a large component on a dedicated residual dimension (0 for ordinary
    tokens, 1 + j for cycle token j). The layers add O(1) per dimension after their input norms,
    so that dimension still dominates after the final RMSNorm, and the LM head maps it to the
    wanted next token with a margin of tens of logits. Image positions are untouched.
    """
    if not cycle and bias_token is None:
        return
    targets = [*cycle, *([] if bias_token is None else [bias_token])]
    for t in targets:
        if not 0 <= t < vocab:
            raise ValueError(f"token id {t} is outside the vocabulary ({vocab})")
    if len(cycle) + 1 > hidden:
        raise ValueError(f"a cycle of {len(cycle)} tokens needs hidden > {len(cycle)}")
    emb, head = state["model.tok_embeddings.weight"], state["output.weight"]
    emb[:, : 1 + len(cycle)] = 0.0
    emb[:, 0] = _STEER_EMBED
    head[:, : 1 + len(cycle)] = 0.0
    if bias_token is not None:
        head[bias_token, 0] = _STEER_HEAD
        return
    head[cycle[0], 0] = _STEER_HEAD  # any ordinary token -> the start of the cycle
    for j, tok in enumerate(cycle):
        emb[tok, 0] = 0.0
        emb[tok, 1 + j] = _STEER_EMBED
        head[cycle[(j + 1) % len(cycle)], 1 + j] = _STEER_HEAD


def _write_config(
    path: Path,
    *,
    vocab: int,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    max_length: int,
    dtype_name: str,
    vision: dict[str, Any],
) -> None:
    config = {
        "architectures": ["InternLMXComposer2ForCausalLM"],
        "attn_implementation": "flash_attention_2",
        "auto_map": {
            "AutoConfig": "configuration_internlm_xcomposer2.InternLMXcomposer2Config",
            "AutoModel": "modeling_internlm_xcomposer2.InternLMXComposer2ForCausalLM",
            "AutoModelForCausalLM": "modeling_internlm_xcomposer2.InternLMXComposer2ForCausalLM",
        },
        "bias": False,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "hidden_act": "silu",
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "max_length": max_length,
        "max_position_embeddings": 32768,
        "model_type": "internlmxcomposer2",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "num_key_value_heads": kv_heads,
        "pad_token_id": EOS_ID,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 1000000,
        "tie_word_embeddings": False,
        "torch_dtype": dtype_name,
        "transformers_version": "4.33.1",
        "use_cache": False,
        "vocab_size": vocab,
        "vision_config": vision,
    }
    generation = {
        "_from_model_config": True,
        "bos_token_id": BOS_ID,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID,
        "max_length": 4480,
        "transformers_version": "4.33.1",
    }
    _write_json(path / "config.json", config)
    _write_json(path / "generation_config.json", generation)


def _write_weights(
    path: Path, state: dict[str, torch.Tensor], *, fmt: str, shards: int, layers: int
) -> None:
    import torch

    if fmt == "bin":
        single, pattern, index_name = (
            "pytorch_model.bin",
            "pytorch_model-{:05d}-of-{:05d}.bin",
            "pytorch_model.bin.index.json",
        )
    else:
        single, pattern, index_name = (
            "model.safetensors",
            "model-{:05d}-of-{:05d}.safetensors",
            "model.safetensors.index.json",
        )

    def save(tensors: dict[str, torch.Tensor], file: Path) -> None:
        if fmt == "bin":
            torch.save(tensors, file)
        else:
            from safetensors.torch import save_file

            save_file(tensors, str(file), metadata={"format": "pt"})

    if shards == 1:
        save(state, path / single)
        return
    owner = _shard_of(list(state), layers, shards)
    names = [pattern.format(i + 1, shards) for i in range(shards)]
    weight_map: dict[str, str] = {}
    for i, name in enumerate(names):
        part = {k: v for k, v in state.items() if owner[k] == i}
        save(part, path / name)
        weight_map.update(dict.fromkeys(part, name))
    total = sum(v.numel() * v.element_size() for v in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    _write_json(path / index_name, index)
