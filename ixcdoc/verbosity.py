"""Whether third-party libraries may talk on stderr: quiet by default, all of it with --debug.

Some libraries print warnings a user cannot act on (SentencePiece on every load of the real
InternLM2 tokenizer, bitsandbytes about an optional CPU kernel). Each is silenced where it is
emitted, never by redirecting stderr, and shown again when verbose is on: ``set_verbose(True)``
(the CLI's --debug) or the environment variable IXCDOC_DEBUG=1.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

ENV_DEBUG = "IXCDOC_DEBUG"
_TRUE = {"1", "true", "yes", "on"}
# bitsandbytes logs this at import on CPUs with AVX512-BF16 when the optional `kernels` package
# is missing; its slower built-in kernel is used instead, which is fine for us.
BNB_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_NOISE = "Failed to load CPU gemm_4bit_forward from kernels-community"

_verbose: bool | None = None  # None: follow IXCDOC_DEBUG


def set_verbose(on: bool | None) -> None:
    """Show (True) or hide (False) library noise; None goes back to following IXCDOC_DEBUG."""
    global _verbose
    _verbose = on


def is_verbose() -> bool:
    """True when library warnings should reach stderr (--debug or IXCDOC_DEBUG=1)."""
    if _verbose is not None:
        return _verbose
    return os.environ.get(ENV_DEBUG, "").strip().lower() in _TRUE


class _DropBnbNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return is_verbose() or not str(record.msg).startswith(BNB_NOISE)


def quiet_bitsandbytes() -> None:
    """Drop bitsandbytes' optional-kernel warning unless verbose; call before importing it."""
    logger = logging.getLogger(BNB_LOGGER)  # the same object bitsandbytes will log through
    if not any(isinstance(f, _DropBnbNoise) for f in logger.filters):
        logger.addFilter(_DropBnbNoise())


@contextmanager
def quiet_sentencepiece(spm: Any) -> Iterator[None]:
    """Hide SentencePiece's absl warnings (e.g. "Piece at index 354 is a null character")."""
    # SentencePiece's level is process-global and has no getter; 0 is its default.
    spm.set_min_log_level(0 if is_verbose() else 2)
    try:
        yield
    finally:
        spm.set_min_log_level(0)
