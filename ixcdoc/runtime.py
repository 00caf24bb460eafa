"""The library API over the native model: load once, then encode, score and chat.

    >>> import ixcdoc
    >>> m = ixcdoc.load("internlm/internlm-xcomposer2-4khd-7b")          # CUDA, bf16
    >>> a = m.chat([page_image], "What is the total?", hd=16)
    >>> a.text, a.grid, a.n_image_tokens, a.timings["decode_ms"]

See docs/api.md. Everything heavy (torch, the model) is imported here, never by ``ixcdoc.cli``
at import time.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ixcdoc.answer import Answer
from ixcdoc.config import ModelConfig
from ixcdoc.engine.prompts import (
    Loaded,
    PromptEmbeds,
    embed_parts,
    part_grids,
    part_pixels,
    prompt_parts,
)
from ixcdoc.engine.request import DEFAULT_HD, check_speculate
from ixcdoc.errors import DeviceError, UsageError, WeightsError
from ixcdoc.generate import (
    GenerationResult,
    OnToken,
    SamplingConfig,
    ShouldStop,
    generate,
    seeded_generator,
)
from ixcdoc.prompt import DEFAULT_META_INSTRUCTION
from ixcdoc.tasks import SCREEN_HD, SCREEN_NO, SCREEN_PROMPT, SCREEN_YES
from ixcdoc.tiling import check_hd, hd_geometry

if TYPE_CHECKING:
    from PIL import Image

    from ixcdoc.engine import ChatRequest, Engine
    from ixcdoc.model.xcomposer import XComposer2
    from ixcdoc.preprocess import HDImage
    from ixcdoc.tokenizer import Tokenizer

QUANT_CHOICES = ("auto", "none", "bf16", "4bit")
_DTYPES = {
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp32": torch.float32,
    "float32": torch.float32,
    "float": torch.float32,
}
_S = SamplingConfig  # generation defaults live there, once


def _resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        from ixcdoc.tinyckpt import keep_command, try_options

        raise DeviceError(
            f"no CUDA GPU found (torch {torch.__version__}): ixcdoc runs the model on an "
            "NVIDIA GPU (`ixcdoc tiers` shows the memory each tier needs). Without one, add "
            "--device cpu --quant bf16 (the 17.2 GB of bf16 weights in RAM, minutes per page; "
            "device='cpu', quant='bf16' from Python), or try every command on a tiny random "
            f"model: `{keep_command()}`, then {try_options()}"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise UsageError(f"unknown device {device!r} ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} requested but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif dev.type != "cpu":
        raise DeviceError(f"device {device!r} is not supported (use 'cuda', 'cuda:N' or 'cpu')")
    return dev


def _resolve_precision(
    dev: torch.device, quant: str, dtype: str | torch.dtype | None
) -> tuple[str, torch.dtype]:
    """(quant label, compute dtype) for a device and the user's choices."""
    if quant not in QUANT_CHOICES:
        raise UsageError(
            f"unknown quantization {quant!r}; choose one of {', '.join(QUANT_CHOICES)}"
        )
    if isinstance(dtype, str):
        if dtype.lower() not in _DTYPES:
            raise UsageError(f"unknown dtype {dtype!r}; use bfloat16, float16 or float32")
        dtype = _DTYPES[dtype.lower()]
    elif dtype is not None and dtype not in _DTYPES.values():
        raise UsageError(f"unsupported dtype {dtype}; use bfloat16, float16 or float32")
    if quant == "auto":
        cuda_bf16 = dev.type == "cuda" and dtype in (None, torch.bfloat16)
        quant = "bf16" if cuda_bf16 else "none"  # load() turns this into 4bit when it won't fit
    if dtype is None:
        dtype = torch.bfloat16 if (dev.type == "cuda" or quant == "bf16") else torch.float32
    if quant == "bf16" and dtype != torch.bfloat16:
        raise UsageError(f"quant='bf16' conflicts with dtype={dtype}")
    if quant == "none" and dtype == torch.bfloat16:
        quant = "bf16"
    return quant, dtype


def _bf16_fits(path: Path, dev: torch.device) -> bool:
    """True when bf16 weights plus a square page at the ``ask`` ceiling (HD25, the tier ask
    and chart stop at) fit the GPU's free memory (ixcdoc.vram)."""
    from ixcdoc.planning import VRAM_HEADROOM
    from ixcdoc.tasks import ASK
    from ixcdoc.vram import estimate_vram

    cfg = ModelConfig.from_file(path / "config.json")
    free, _total = torch.cuda.mem_get_info(dev)
    g = hd_geometry(10**4, 10**4, ASK.hd_ceiling, cfg.tile)
    est = estimate_vram(cfg, g.image_tokens(cfg.vision.patch_size), g.crops, quant="bf16")
    return est.total <= free * VRAM_HEADROOM


def _resolve_path(
    model: str | Path | None, revision: str | None, progress: Any
) -> tuple[Path, str]:
    """Local checkpoint folder and the name records use for ``model`` (a folder or a hub id)."""
    from ixcdoc import hub

    path = hub.resolve_model(model, revision=revision, progress=progress)
    return Path(path), hub.model_name(model)


class DocModel:
    """A loaded IXC2-4KHD: model, tokenizer and the settings it was loaded with."""

    def __init__(
        self,
        model: XComposer2,
        tokenizer: Tokenizer,
        *,
        device: torch.device,
        dtype: torch.dtype,
        quant: str,
        path: Path | None = None,
        model_id: str | None = None,
        revision: str | None = None,
    ) -> None:
        """Wrap an already loaded model; use ``ixcdoc.load`` to build one."""
        self.model = model
        self.tokenizer = tokenizer
        self.config: ModelConfig = model.config
        self.device = device
        self.dtype = dtype
        self.quant = quant
        self.path = path
        self.model_id = model_id
        self.revision = revision
        # The KV cache is the model's own: ``chat`` (and a new engine) rebuild it, a started
        # engine steps on it from its thread. The lock serializes the callers that rebuild it;
        # ``running_engine`` is the started engine that owns it until its thread ends.
        self._cache_lock = threading.RLock()
        self.running_engine: Engine | None = None
        # what an engine is handed: the network, tokenizer and pixel function, not this facade
        self.loaded = Loaded(
            model,
            tokenizer,
            self.pixels,
            device,
            claim_cache=self.claim_cache,
            release_cache=self.release_cache,
        )

    @property
    def tile(self) -> int:
        """Side of one HD crop in pixels (336 for the real model)."""
        return self.config.tile

    def __repr__(self) -> str:
        return (
            f"DocModel({self.model_id!r}, device={self.device}, dtype={self.dtype}, "
            f"quant={self.quant!r}, tile={self.tile})"
        )

    # -- vision --------------------------------------------------------------------------------

    def pixels(self, image: Image.Image | HDImage, hd: int) -> torch.Tensor:
        """Upstream HD_transform + CLIP normalize: PIL image -> [1, 3, H, W] float32 on device.

        Resizing runs on the CPU (already done when ``image`` is an ``HDImage`` made ahead for
        this tier); the uint8 pixels travel to the device and are normalized there (4x fewer
        bytes over PCIe, the same float32 ops, so the same values).
        """
        from ixcdoc.preprocess import HDImage, hd_transform, hwc_uint8, normalize_uint8

        check_hd(hd)
        if isinstance(image, HDImage):
            hd_img = image.at(hd, self.tile)
        else:
            hd_img = hd_transform(image, hd, self.tile)
        hwc = hwc_uint8(hd_img)  # [H, W, 3] uint8
        if self.device.type == "cuda":
            hwc = hwc.pin_memory().to(self.device, non_blocking=True)
        return normalize_uint8(hwc)

    @property
    def precision(self) -> str:
        """What output records call the weights' precision: bf16, fp16, fp32 or 4bit."""
        if self.quant == "4bit":
            return "4bit"
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")

    def gpu_budget(self) -> Any:
        """The GPU as the tier estimate should see it (free memory as if nothing were loaded).

        Returns an ``ixcdoc.gpu.GpuInfo`` or None on the CPU. The estimate counts the weights
        itself, so what this process already holds is added back to the free memory.
        """
        if self.device.type != "cuda":
            return None
        from ixcdoc.gpu import GpuInfo

        free, total = torch.cuda.mem_get_info(self.device)
        held = torch.cuda.memory_reserved(self.device)
        name = torch.cuda.get_device_name(self.device)
        return GpuInfo(name, total, free + held, "torch")

    def free_cache(self) -> None:
        """Drop the decoder's KV cache (a batch-sized one must not outlive its engine); the next
        ``chat`` or engine allocates what it needs."""
        self.model.reset_caches()

    def release_memory(self) -> None:
        """Give cached GPU memory back after an out-of-memory error, before a retry."""
        from ixcdoc.engine.runner import release_memory

        release_memory(self.device)

    @contextlib.contextmanager
    def owning_cache(self, what: str) -> Iterator[None]:
        """Hold the model's KV cache for ``what`` (one caller at a time); a UsageError naming
        the engine while a started engine owns it (``Engine.start`` until its thread ends)."""
        with self._cache_lock:
            engine = self.running_engine
            if engine is not None:
                raise UsageError(
                    f"{what}: {engine!r} is running on this model and owns its KV cache; "
                    "submit the request to that engine, or close it first"
                )
            yield

    def claim_cache(self, engine: Engine) -> None:
        """``engine`` starts: it owns the KV cache until ``release_cache`` (waits for a
        ``chat`` in progress; UsageError if another engine runs)."""
        with self.owning_cache(f"starting {engine!r}"):
            self.running_engine = engine

    def release_cache(self, engine: Engine) -> None:
        """``engine``'s thread has ended: ``chat`` and new engines may use the cache again."""
        with self._cache_lock:
            if self.running_engine is engine:
                self.running_engine = None

    @torch.inference_mode()
    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Normalized HD tensor [1, 3, H, W] -> image embeddings [N, hidden] (separators in)."""
        return self.model.encode_image(pixel_values.to(self.device))

    # -- prompt ----------------------------------------------------------------------------------

    @torch.inference_mode()
    def embed_prompt(
        self,
        images: Sequence[Image.Image],
        query: str,
        *,
        hd: int = DEFAULT_HD,
        meta_instruction: str = DEFAULT_META_INSTRUCTION,
    ) -> PromptEmbeds:
        """Build the chat prompt, encode every image and splice: embeddings + im_mask.

        The prompt path of ``ixcdoc.engine.prompts``, the engine's own, one image per vision
        forward as upstream's ``chat`` encodes them."""
        check_hd(hd)
        t0 = time.perf_counter()
        parts = prompt_parts(self.tokenizer, query, meta_instruction, len(images))
        pixels = part_pixels(parts, images, hd, self.pixels)
        embeds = [self.model.encode_images([px])[0] for px in pixels]  # [N_i, D] each
        grids = part_grids(parts, images, hd, self.tile)
        out = embed_parts(self.model, parts, embeds, grids)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        out.vision_ms = (time.perf_counter() - t0) * 1000
        return out

    @torch.inference_mode()
    def prompt_logits(
        self,
        images: Sequence[Image.Image],
        query: str,
        hd: int = DEFAULT_HD,
        meta_instruction: str = DEFAULT_META_INSTRUCTION,
    ) -> torch.Tensor:
        """fp32 logits of every prompt position: [seq_len, vocab] (seq_len x vocab x 4 bytes).

        Uses no KV cache: one left by an earlier ``chat`` is dropped first (a fresh forward
        writes its keys into any cache that exists, and a longer prompt would not fit it).
        """
        with self.owning_cache("prompt_logits"):
            p = self.embed_prompt(images, query, hd=hd, meta_instruction=meta_instruction)
            self.model.reset_caches()
            return self.model(p.inputs_embeds, p.im_mask)[0]

    # -- generation ------------------------------------------------------------------------------

    def chat(
        self,
        images: Sequence[Image.Image],
        query: str,
        *,
        hd: int = DEFAULT_HD,
        meta_instruction: str = DEFAULT_META_INSTRUCTION,
        max_new_tokens: int = _S.max_new_tokens,
        do_sample: bool = _S.do_sample,
        temperature: float = _S.temperature,
        top_p: float = _S.top_p,
        top_k: int = _S.top_k,
        repetition_penalty: float = _S.repetition_penalty,
        on_token: OnToken | None = None,
        should_stop: ShouldStop | None = None,
        seed: int | None = None,
        num_beams: int = 1,
        draft: str | None = None,
        speculate: str = "auto",
    ) -> Answer:
        """Answer ``query`` about ``images`` (one ``<ImageHere>`` per image; prepended if absent).

        Greedy by default. ``on_token(id)`` streams every generated token; returning False
        stops. Stops at EOS or ``[UNUSED_TOKEN_145]`` (neither is part of the answer).
        ``num_beams`` > 1: beam search on the batched engine (a one-request ``chat_batch``);
        ``on_token`` then sees the chosen answer's tokens once it is chosen and
        ``should_stop`` is not consulted. ``draft``: text the answer likely copies (a page's
        text layer); with ``speculate="auto"`` the request runs on a one-request engine that
        verifies the draft's proposals exactly (the answer is the same, ``Answer.
        accepted_tokens`` says how many were free). Without a draft: the batch-1 loop.
        """
        options = {
            "max_new_tokens": max_new_tokens,
            "do_sample": do_sample,
            "temperature": temperature,
            "top_p": top_p,
            "top_k": top_k,
            "repetition_penalty": repetition_penalty,
        }
        try:
            cfg = SamplingConfig(**options)
        except ValueError as e:
            raise UsageError(str(e)) from None
        check_speculate(speculate)
        if num_beams != 1 or (draft is not None and speculate != "off"):
            from ixcdoc.engine.request import ChatRequest

            try:
                req = ChatRequest(
                    list(images),
                    query,
                    hd=hd,
                    meta_instruction=meta_instruction,
                    seed=seed,
                    num_beams=num_beams,
                    draft=draft,
                    speculate=speculate,
                    **options,
                )
            except ValueError as e:
                raise UsageError(str(e)) from None
            with self.owning_cache("chat"):  # the engine rebuilds the cache for the beams
                [answer] = self._run_engine(
                    [req], num_beams, on_token=on_token, should_stop=should_stop
                )
            if isinstance(answer, BaseException):
                raise answer
            return answer
        gen = seeded_generator(seed, self.device)
        try:
            with self.owning_cache("chat"):  # generate rebuilds the cache for this one prompt
                p = self.embed_prompt(images, query, hd=hd, meta_instruction=meta_instruction)
                res: GenerationResult = generate(
                    self.model,
                    p.inputs_embeds,
                    p.im_mask,
                    stop_ids=self.tokenizer.stop_ids,
                    config=cfg,
                    on_token=on_token,
                    should_stop=should_stop,
                    generator=gen,
                )
        except torch.cuda.OutOfMemoryError:
            raise DeviceError(
                f"out of GPU memory at HD{hd}; try a lower tier or quant='4bit'",
                code="oom",
            ) from None
        timings: dict[str, Any] = {
            "vision_ms": p.vision_ms,
            "prefill_ms": res.prefill_ms,
            "decode_ms": res.decode_ms,
            "n_tokens": res.n_tokens,
            "decode_tokens_per_s": res.decode_tokens_per_s,
        }
        return Answer(
            text=self.tokenizer.decode(res.token_ids, skip_special=True),
            token_ids=res.token_ids,
            stop_reason=res.stop_reason,
            hd=hd,
            grids=p.grids,
            n_image_tokens=p.n_image_tokens,
            prompt_tokens=p.prompt_tokens,
            truncated=p.truncated,
            timings=timings,
            stop_detail=res.detail,
        )

    # -- batched ---------------------------------------------------------------------------------

    def engine(
        self,
        *,
        n_slots: int,
        max_len: int,
        capture: bool | None = None,
        **kwargs: Any,
    ) -> Engine:
        """A streaming engine on this model: ``submit`` requests, run ``step``/``start``.

        ``n_slots`` sequences (each beam counts) of up to ``max_len`` positions share one
        KV cache, the model's own. A started engine owns it until it is closed: meanwhile
        ``chat``, ``chat_batch``, ``prompt_logits`` and ``engine`` raise UsageError naming it.
        See ``ixcdoc.engine.Engine``.
        """
        from ixcdoc.engine.engine import Engine

        with self.owning_cache("engine()"):  # a new engine allocates the model's cache
            return Engine(self.loaded, n_slots=n_slots, max_len=max_len, capture=capture, **kwargs)

    def batch_size_for(self, requests: Sequence[ChatRequest]) -> int:
        """Requests that fit at once (``sizing.slots_that_fit``) for the largest of ``requests``."""
        from ixcdoc.engine.arith import prompt_tokens, vision_tiles
        from ixcdoc.sizing import SlotNeed, slots_that_fit
        from ixcdoc.vram import PROMPT_TEXT_TOKENS

        worst = max(requests, key=lambda r: prompt_tokens(self.loaded, r) + r.max_new_tokens)
        need = SlotNeed(
            max(prompt_tokens(self.loaded, worst) - PROMPT_TEXT_TOKENS, 0),
            vision_tiles(self.loaded, worst) - len(worst.images),
            PROMPT_TEXT_TOKENS,
            worst.max_new_tokens,
            beams=max(r.num_beams for r in requests),
        )
        return slots_that_fit(self, need)

    def chat_batch(
        self,
        requests: Sequence[ChatRequest],
        *,
        max_batch: int | None = None,
        return_exceptions: bool = False,
    ) -> list[Answer]:
        """Answer every request through the batched engine; answers in request order.

        Each answer equals what ``chat`` gives for that request alone. ``max_batch``: the most
        sequences in flight (beams count each); None = what the memory estimate allows (64 on
        the CPU). A request that fails (out of memory in its prefill: a DeviceError with code
        'oom') does not stop the others: with ``return_exceptions`` its error object takes its
        place in the list, otherwise the first error is raised once all have finished.
        """
        if max_batch is not None and (
            isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1
        ):
            raise UsageError(f"max_batch must be None or a whole number >= 1, got {max_batch!r}")
        if not requests:
            return []
        for r in requests:
            check_hd(r.hd)
        n = max_batch if max_batch is not None else self.batch_size_for(requests)
        with self.owning_cache("chat_batch"):  # held until its engine's cache is freed
            out = self._run_engine(requests, n)
        if not return_exceptions:
            for a in out:
                if isinstance(a, BaseException):
                    raise a
        return out

    def page_relevance(
        self,
        images: Sequence[Image.Image | HDImage],
        question: str,
        *,
        hd: int = SCREEN_HD,
        max_batch: int | None = None,
    ) -> list[float]:
        """How likely each page is to answer ``question``: one score per image, higher is better.

        Every page is asked ``tasks.SCREEN_PROMPT`` at tier ``hd``, all on one batched engine
        (``max_batch`` sequences at once; None: what the memory estimate allows, as
        ``chat_batch``). The score is the log-odds of the first answer token at the prefill:
        logsumexp of the logits of "Yes" (its spellings, ``tasks.SCREEN_YES``) minus that of
        "No". Nothing is decoded. A page that fails (out of memory) raises its error.
        """
        from ixcdoc.engine.request import ChatRequest

        if not images:
            return []
        yes, no = answer_ids(self.tokenizer)
        query = SCREEN_PROMPT.format(question=question)
        requests = [
            ChatRequest([im], query, hd=hd, max_new_tokens=1, tag=i) for i, im in enumerate(images)
        ]
        scores: dict[int, float] = {}

        def first_logits(handle: Any, logits: torch.Tensor) -> None:  # logits: [V] fp32
            i = handle.request.tag
            if i not in scores:  # the prefill's row: the first answer token
                scores[i] = relevance(logits, yes, no)

        for r in requests:
            check_hd(r.hd)
        n = max_batch if max_batch is not None else self.batch_size_for(requests)
        with self.owning_cache("page_relevance"):  # held until its engine's cache is freed
            out = self._run_engine(requests, n, logits_hook=first_logits)
        for a in out:
            if isinstance(a, BaseException):
                raise a
        return [scores[i] for i in range(len(requests))]

    def _run_engine(
        self,
        requests: Sequence[ChatRequest],
        n: int,
        *,
        on_token: OnToken | None = None,
        should_stop: ShouldStop | None = None,
        logits_hook: Any = None,
    ) -> list[Any]:
        """Run ``requests`` on an engine of up to ``n`` sequences; answers or errors in order."""
        from ixcdoc.engine.arith import request_positions
        from ixcdoc.sizing import slot_positions

        beams = max(r.num_beams for r in requests)
        n_slots = max(min(n, sum(r.num_beams for r in requests)), beams)
        need = max(request_positions(self.loaded, r) for r in requests)
        max_len = slot_positions(need, self.config.max_position_embeddings)
        eng = self.engine(n_slots=n_slots, max_len=max_len, logits_hook=logits_hook)
        try:
            handles = [eng.submit(r, on_token=on_token, should_stop=should_stop) for r in requests]
            while not eng.idle:
                done = sum(h.done for h in handles)
                try:
                    eng.step()
                except Exception:
                    # A step that raises has failed the requests it ran (their handles hold
                    # the error): the others go on. One that failed none is a bug: raise it.
                    if sum(h.done for h in handles) == done:
                        raise
        finally:
            self.model.reset_caches()  # a batch-sized cache must not outlive the batch
        return [h.error if h.error is not None else h.answer for h in handles]


def relevance(logits: torch.Tensor, yes: list[int], no: list[int]) -> float:
    """A page's screening score from the logits [V] of the first answer token: logsumexp of
    the "yes" ids minus that of the "no" ids (``answer_ids``), the log-odds of a yes."""
    return float(torch.logsumexp(logits[yes], 0) - torch.logsumexp(logits[no], 0))


def answer_ids(tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """The token ids a "yes" and a "no" answer start with (``tasks.SCREEN_YES`` / ``SCREEN_NO``,
    each spelling's first piece); an id both start with counts for neither."""
    yes = {tokenizer.encode(w, bos=False)[0] for w in SCREEN_YES}
    no = {tokenizer.encode(w, bos=False)[0] for w in SCREEN_NO}
    if not yes - no or not no - yes:
        raise WeightsError(
            f"{tokenizer!r}: the tokenizer starts yes and no answers with the same pieces; "
            "pages cannot be screened"
        )
    return sorted(yes - no), sorted(no - yes)


def load(
    model: str | Path | None = None,
    device: str = "auto",
    quant: str = "auto",
    dtype: str | torch.dtype | None = None,
    *,
    revision: str | None = None,
    progress: Any = None,
) -> DocModel:
    """Load a checkpoint (folder or hub id; None = $IXCDOC_MODEL or the official 4KHD id).

    device: 'auto' (CUDA, else DeviceError), 'cuda', 'cuda:N' or 'cpu' (float32, slow).
    quant: 'auto' (bf16 on CUDA if an HD25 page fits, else 4bit; none on CPU), 'none', 'bf16'
           or '4bit' (bitsandbytes NF4).
    dtype: compute dtype override ('bfloat16', 'float16', 'float32').
    revision / progress: passed to ``ixcdoc.hub.resolve_model`` for hub ids.
    """
    from ixcdoc.model.weights import load_model
    from ixcdoc.tokenizer import Tokenizer

    dev = _resolve_device(device)  # before any download: no GPU means nothing to fetch
    auto = quant == "auto"
    quant, torch_dtype = _resolve_precision(dev, quant, dtype)
    path, model_id = _resolve_path(model, revision, progress)
    if auto and quant == "bf16" and dev.type == "cuda" and not _bf16_fits(path, dev):
        quant = "4bit"
    tokenizer = Tokenizer.from_dir(path)
    try:
        net = load_model(
            path, dtype=torch_dtype, device=dev, quant="4bit" if quant == "4bit" else None
        )
    except torch.cuda.OutOfMemoryError:
        raise DeviceError(
            f"out of GPU memory while loading {model_id} in {quant}; try quant='4bit'",
            code="oom",
        ) from None
    if tokenizer.vocab_size > net.config.vocab_size:
        raise WeightsError(
            f"{path}: tokenizer has {tokenizer.vocab_size} ids but the model only "
            f"{net.config.vocab_size}"
        )
    revision = None
    try:
        from ixcdoc.hub import model_revision

        revision = model_revision(path)
    except ImportError:
        pass
    return DocModel(
        net,
        tokenizer,
        device=dev,
        dtype=torch_dtype,
        quant=quant,
        path=path,
        model_id=model_id,
        revision=revision,
    )
