#!/usr/bin/env bash
# The README's first command: a virtual environment, the right build of torch, ixcdoc, then
# one answer about samples/paper.pdf.
#
# - With an NVIDIA GPU (nvidia-smi lists one): torch from PyPI (the CUDA build), then the real
#   model answers; its first run fetches the weights (17 GB) into the hub cache, once.
# - Without one: the CPU build of torch from the PyTorch CPU index (no CUDA wheels), a tiny
#   random model in ./tiny-model, and an answer in seconds (random text: it shows the install
#   works, not what the model knows).
#
# Rerunning reuses .venv and tiny-model. Any failure ends with one "quickstart: error:" line.
set -euo pipefail
cd "$(dirname "$0")/.."

# The tests' torch (.ci/run installs the same one); "+cpu" exists only on the PyTorch index.
TORCH_CPU="torch==2.13.0+cpu"
CPU_INDEX="https://download.pytorch.org/whl/cpu"
QUESTION="Which setting has the best InfoVQA accuracy in Table 1?"
LOG=".venv/quickstart-pip.log"
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf 'quickstart: %s\n' "$*" >&2; }
fail() {
    printf 'quickstart: error: %s\n' "$*" >&2
    exit 1
}
pip_install() { # pip_install WHAT ARGS...: quiet, its output in $LOG, one line if it fails
    local what=$1
    shift
    if ! python -m pip install "$@" >>"$LOG" 2>&1; then
        local why
        why=$(grep -m 1 -E '^ERROR' "$LOG" || true)
        fail "installing $what failed (${why:-see $LOG}); the full output is in $LOG"
    fi
}

command -v python3 >/dev/null || fail "python3 not found: install Python 3.10 or newer"
python3 -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    fail "ixcdoc needs Python 3.10 or newer; python3 is $(python3 -V 2>&1)"

gpu=""
if command -v nvidia-smi >/dev/null 2>&1; then
    gpu=$(nvidia-smi -L 2>/dev/null | grep -m 1 '^GPU ' || true)
fi

if [ -x .venv/bin/python ]; then
    say "reusing .venv"
else
    say "creating .venv"
    python3 -m venv .venv >/dev/null 2>&1 ||
        fail "python3 -m venv .venv failed (on Debian or Ubuntu: apt install python3-venv)"
fi
# shellcheck disable=SC1091
. .venv/bin/activate
: >"$LOG"

if [ -n "$gpu" ]; then
    say "found ${gpu%% (UUID*}: installing ixcdoc with the CUDA build of torch (about 3 GB of wheels)"
    pip_install "ixcdoc[quant]" -e '.[quant]'
    python -c 'import sys, torch; sys.exit(torch.version.cuda is None)' ||
        fail ".venv holds the CPU build of torch but this machine has a GPU: remove .venv and rerun"
    say "asking the sample paper (the first run fetches the weights, 17 GB, once)"
    ixcdoc ask samples/paper.pdf "$QUESTION" || fail "ixcdoc ask failed: its error is the line above"
    say "done. Next: . .venv/bin/activate, then ixcdoc --help (the README lists every command)"
    exit 0
fi

say "no NVIDIA GPU found: installing the CPU build of torch ($TORCH_CPU, about 190 MB) from $CPU_INDEX"
pip_install "$TORCH_CPU" --no-deps "$TORCH_CPU" --index-url "$CPU_INDEX"
say "installing ixcdoc and its dependencies"
pip_install "ixcdoc[quant]" -e '.[quant]'

# The folder and the options that make a tiny model answer in seconds: one copy, in ixcdoc.
folder=$(python -c 'from ixcdoc.tinyckpt import TRY_FOLDER; print(TRY_FOLDER)')
options=$(python -c 'from ixcdoc.tinyckpt import try_options; print(try_options())')
if [ -d "$folder" ]; then
    say "reusing the tiny random model in ./$folder"
else
    say "checking the installation and keeping a tiny random model in ./$folder"
    # its steps go to stderr; its report (stdout) would only repeat "no GPU"
    ixcdoc doctor --selftest --keep "$folder" >/dev/null || fail "the self-test failed: its error is the line above"
fi
say "asking the sample paper on the tiny model, on the CPU"
# shellcheck disable=SC2086  # $options is several words on purpose
ixcdoc ask samples/paper.pdf "$QUESTION" $options || fail "ixcdoc ask failed: its error is the line above"
say "done: the answer above is random text from the tiny model, so the install works end to end."
say "next: . .venv/bin/activate, then any command with $options;"
say "with the real weights and no GPU: ixcdoc ask samples/paper.pdf \"...\" --device cpu --quant bf16"
say "(17 GB of weights fetched once, 17.2 GB of RAM, minutes per page)"
