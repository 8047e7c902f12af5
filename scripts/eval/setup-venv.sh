#!/usr/bin/env bash
# Creates the Python environment of the evaluation scripts in .cache/venv (git-ignored) and
# prints its python: numpy, gguf (reads and dequantizes GGUF independently of tqkv), tokenizers
# (Hugging Face BPE) and matplotlib. Idempotent.
#   PY=$(scripts/eval/setup-venv.sh); $PY scripts/eval/check_logits.py ...
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="${repo}/.cache/venv"
if [[ ! -x "${venv}/bin/python" ]]; then
  python3 -m venv "${venv}" >&2
fi
if ! "${venv}/bin/python" -c "import numpy, gguf, tokenizers, matplotlib" 2>/dev/null; then
  "${venv}/bin/pip" install --quiet numpy gguf tokenizers matplotlib >&2
fi
echo "${venv}/bin/python"
