"""Library noise on stderr: hidden by default where it is emitted, shown with --debug."""

from __future__ import annotations

import logging
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from ixcdoc import verbosity
from ixcdoc.tokenizer import Tokenizer

CKPT = Path(__file__).parent / "fixtures" / "upstream" / "tiny_ckpt"


@pytest.fixture(autouse=True)
def _default_verbosity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(verbosity.ENV_DEBUG, raising=False)
    yield
    verbosity.set_verbose(None)


def _with_null_piece(folder: Path) -> Path:
    """The tiny tokenizer plus a "\\0" piece, which makes SentencePiece warn like the real one."""
    for name in ("tokenizer.model", "tokenizer_config.json", "special_tokens_map.json"):
        if (CKPT / name).exists():
            shutil.copy(CKPT / name, folder / name)
    # One more ModelProto.pieces entry (field 1): piece "\0" (field 1), score 0 (2), NORMAL (3).
    piece = b"\x0a\x01\x00" + b"\x15" + struct.pack("<f", 0.0) + b"\x18\x01"
    with open(folder / "tokenizer.model", "ab") as f:
        f.write(b"\x0a" + bytes([len(piece)]) + piece)
    return folder


def test_sentencepiece_warning_is_hidden_unless_verbose(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    folder = _with_null_piece(tmp_path)
    verbosity.set_verbose(True)
    Tokenizer.from_dir(folder)
    assert "is a null character" in capfd.readouterr().err  # the model does trigger it
    verbosity.set_verbose(False)
    Tokenizer.from_dir(folder)
    assert "null character" not in capfd.readouterr().err


def test_ixcdoc_debug_env_turns_verbose_on(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not verbosity.is_verbose()
    monkeypatch.setenv(verbosity.ENV_DEBUG, "1")
    assert verbosity.is_verbose()
    verbosity.set_verbose(False)  # an explicit setting wins over the environment
    assert not verbosity.is_verbose()


def test_bitsandbytes_kernel_warning_is_dropped_unless_verbose(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pytest.importorskip("bitsandbytes")
    from ixcdoc.model import quant

    quant._bnb()  # installs the filter before importing bitsandbytes
    logger = logging.getLogger(verbosity.BNB_LOGGER)

    def emit() -> None:  # bitsandbytes' own call, backends/cpu/ops.py
        logger.warning(
            "Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please make sure "
            "you already `pip install kernels` and the kernels >= 0.11.1",
            "No module named 'kernels'",
        )
        logger.warning("some other bitsandbytes warning")

    with caplog.at_level(logging.WARNING):
        emit()
        assert [r.getMessage() for r in caplog.records] == ["some other bitsandbytes warning"]
        caplog.clear()
        verbosity.set_verbose(True)
        emit()
        assert len(caplog.records) == 2
