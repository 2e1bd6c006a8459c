#!/usr/bin/env bash
# Create .venv and install lfvila with its test dependencies, pinned by constraints.txt.
# Used by the README's set-up command and by CI (.ci/run), so both install the same way.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[dev]"
.venv/bin/lfvila --help > /dev/null
echo "lfvila installed in .venv"
