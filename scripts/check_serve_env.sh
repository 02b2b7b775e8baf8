#!/usr/bin/env bash
# Build what docker/serve.Dockerfile builds, in a venv instead of an image (for machines where docker cannot build):
# a copy holding only pyproject.toml, README.md and st_runtime/, installed with the serve extra; then check that
# `st-serve --help` runs and that torch is not installed.
#   bash scripts/check_serve_env.sh        (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d "${TMPDIR:-/tmp}/st-serve-env.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir "$work/src"
cp pyproject.toml README.md "$work/src/"
cp -r st_runtime "$work/src/st_runtime"
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
"${PYTHON:-python3}" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip install -q "$work/src[serve]"
"$work/venv/bin/st-serve" --help > /dev/null
"$work/venv/bin/python" - <<'PY'
import importlib.util
import sys

import st_runtime.serve  # noqa: F401  (the serve extra is complete)

heavy = [name for name in ("torch", "transformers", "sentence_transformers") if importlib.util.find_spec(name)]
sys.exit(f"the serve environment has {heavy}; it must stay torch-free" if heavy else 0)
PY
echo "check_serve_env: st-serve --help runs; st_runtime + serve extra installed without torch"
