"""What every benchmark's JSON file starts with (when, on what machine, by which command) and
how it is written. Not a script: the benchmarks import it (their folder is on sys.path)."""

from __future__ import annotations

import json
import os
import platform
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() is often empty)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def run_info() -> dict[str, Any]:
    """``date`` (UTC), ``command`` (as typed from the repository root) and ``machine``."""
    torch = sys.modules.get("torch")
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": None if torch is None else torch.__version__,
        },
    }


def save(path: str | Path, result: dict[str, Any]) -> None:
    """Write ``result`` (``run_info()`` and the benchmark's own keys) as JSON to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
