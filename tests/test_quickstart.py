"""The README's two opening commands: the quick start script, and the test command CI runs.

What they install cannot run here (a fresh venv, minutes of pip); these checks keep the copies
of one command from drifting apart: README and ``.ci/run``, and the CPU torch the script and
the tests install.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_blocks() -> list[str]:
    """The fenced bash blocks of the README's quick-start section, in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def ci_command() -> str:
    """The command line ``.ci/run`` runs (its last line)."""
    return (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]


def script_value(name: str) -> str:
    """A ``NAME="value"`` assignment of scripts/quickstart.sh."""
    text = (ROOT / "scripts" / "quickstart.sh").read_text()
    (value,) = re.findall(rf'^{name}="([^"]*)"$', text, flags=re.M)
    return value


def test_the_readme_test_command_is_what_ci_runs() -> None:
    first, tests = quick_start_blocks()
    assert first == "bash scripts/quickstart.sh"
    assert tests == ci_command()


def test_the_quick_start_installs_the_cpu_torch_the_tests_use() -> None:
    argv = shlex.split(ci_command().split("&&")[2])  # pip install ... torch from its index
    assert argv[:3] == ["pip", "install", "-q"]
    assert script_value("TORCH_CPU") in argv
    assert argv[argv.index("--index-url") + 1] == script_value("CPU_INDEX")
    assert script_value("CPU_INDEX") == "https://download.pytorch.org/whl/cpu"


def test_the_quick_start_script_parses() -> None:
    script = ROOT / "scripts" / "quickstart.sh"
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
