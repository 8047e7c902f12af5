#!/usr/bin/env bash
# Runs the real-model evaluation of docs/real-model.md: perplexity of SmolLM2-135M on Moby Dick
# and greedy-generation agreement with f16, for each KV format and baseline. Resumable: a result
# file that exists is not computed again. Slow on 2 cores (about 5-10 minutes per format):
#   nohup scripts/eval/run_eval.sh > eval.log 2>&1 &
# Environment: TQKV (the tqkv binary, default build/tools/tqkv), OUT (result folder, default
# docs/real-model-results), CTX, CHUNKS, SCORE_FROM, GEN_TOKENS, FORMATS, BASELINES.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${repo}"
TQKV="${TQKV:-build/tools/tqkv}"
OUT="${OUT:-docs/real-model-results}"
TEXT="${TEXT:-${repo}/../shared/data/moby-dick.txt}"
CTX="${CTX:-2048}"
CHUNKS="${CHUNKS:-2}"
SCORE_FROM="${SCORE_FROM:-512}"
GEN_TOKENS="${GEN_TOKENS:-48}"
FORMATS="${FORMATS:-f16 tq4 k8v4 tq3 tq2 k4v2}"
BASELINES="${BASELINES:-q4_0 kivi2 tq4-noflip tq2-noflip tq3-noflip}"
MODEL="$(scripts/fetch-model.sh)"
mkdir -p "${OUT}" "${OUT}/chunks4"
# Idle OpenMP threads sleep instead of spinning: the machine is shared.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"

# perplexity KV [NAME [EXTRA OPTIONS...]]
perplexity() {
  local kv="$1" name="${2:-$1}"
  local out="${OUT}/ppl-${name}.json"
  shift; [[ $# -gt 0 ]] && shift
  [[ -s "${out}" ]] && return 0
  echo "== perplexity ${name}" >&2
  "${TQKV}" perplexity -m "${MODEL}" -f "${TEXT}" --kv "${kv}" --ctx "${CTX}" --chunks "${CHUNKS}" \
    --score-from "${SCORE_FROM}" --json "$@" > "${out}.tmp"
  mv "${out}.tmp" "${out}"
  cat "${out}" >&2
}

# Prompts: a long passage of the book (the cache matters), a plain continuation and a chat turn.
prompt_text() {
  case "$1" in
    0) sed -n '/^CHAPTER 1\. Loomings\.$/,$p' "${TEXT}" | sed -n '3,12p' ;;
    1) echo "The history of whaling in New England began" ;;
    2) echo "Explain in a few sentences why the sea is salty." ;;
  esac
}
# generate KV PROMPT [NAME [EXTRA OPTIONS...]]
generate() {
  local kv="$1" p="$2" name="${3:-$1}" chat=()
  local out="${OUT}/gen-${p}-${name}.json"
  shift 2; [[ $# -gt 0 ]] && shift
  [[ -s "${out}" ]] && return 0
  [[ "${p}" == 2 ]] && chat=(--chat)
  echo "== generate prompt ${p} ${name}" >&2
  "${TQKV}" generate -m "${MODEL}" -p "$(prompt_text "${p}")" "${chat[@]}" --kv "${kv}" \
    -n "${GEN_TOKENS}" --json "$@" > "${out}.tmp"
  mv "${out}.tmp" "${out}"
}

for kv in ${FORMATS}; do perplexity "${kv}"; done
for p in 0 1 2; do
  for kv in ${FORMATS} ${BASELINES}; do generate "${kv}" "${p}"; done
done
for kv in ${BASELINES}; do perplexity "${kv}"; done

# Where tq4 falls short: per-layer attention error (keys vs values, sign flips), then the
# candidate fixes: scale rule, codebook, key centering, 8-bit keys on the worst layers.
probe="${OUT}/probe-ctx1024.md"
if [[ ! -s "${probe}" ]]; then
  "${TQKV}" perplexity -m "${MODEL}" -f "${TEXT}" --ctx 1024 --chunks 1 \
    --probe-error tq4,k4v16,k16v4,k8v4,tq4-noflip > "${probe}.tmp"
  mv "${probe}.tmp" "${probe}"
fi
perplexity tq4 tq4-scale-norm --scale-rule norm
perplexity tq4 tq4-codebook-beta --codebook beta
perplexity tq4-center
perplexity tq4-center tq4-k8mixed-center --kv-layers "2,9-11,13,17-20,22,23,25,26=k8v4-center"
perplexity k8v4-center
perplexity tq3-center
perplexity tq2-center
perplexity k4v2-center
perplexity tq4-center tq4-center-beta --codebook beta
perplexity tq4-center tq4-k8mixed-center-beta --codebook beta \
  --kv-layers "2,9-11,13,17-20,22,23,25,26=k8v4-center"
# Key-side fixes: the newest N tokens in f16 beside the compressed cache (-recentN), and
# per-channel key smoothing before the rotation (-smooth); see docs/real-model.md.
keyside_probe="${OUT}/probe-ctx1024-keyside.md"
if [[ ! -s "${keyside_probe}" ]]; then
  "${TQKV}" perplexity -m "${MODEL}" -f "${TEXT}" --ctx 1024 --chunks 1 \
    --probe-error tq4,k4v16,k4v16-smooth,k4v16-center,k4v16-smooth-center,k4v16-recent64 \
    > "${keyside_probe}.tmp"
  mv "${keyside_probe}.tmp" "${keyside_probe}"
fi
recent_probe="${OUT}/probe-ctx1024-recent.md"
if [[ ! -s "${recent_probe}" ]]; then
  "${TQKV}" perplexity -m "${MODEL}" -f "${TEXT}" --ctx 1024 --chunks 1 --probe-error \
    k4v16,k4v16-recent1,k4v16-recent4,k4v16-recent16,k2v16,k2v16-recent32,k2v16-center-recent32,k2v16-smooth-recent32 \
    > "${recent_probe}.tmp"
  mv "${recent_probe}.tmp" "${recent_probe}"
fi
for kv in ${KEYSIDE:-tq4-recent1 tq4-recent4 tq4-recent8 tq4-recent16 tq4-recent64 tq3-recent4 \
    tq3-recent16 tq3-recent64 tq2-recent4 tq2-recent32 tq2-recent64 tq2-center-recent32 \
    tq4-smooth tq4-smooth-center tq4-smooth-recent16 tq2-smooth-recent32 tq4-noflip-recent8 \
    tq3-noflip-recent4 tq2-noflip-recent32}; do
  perplexity "${kv}"
done
perplexity tq4-smooth-center tq4-smooth-center-beta --codebook beta
perplexity tq2-recent32 tq2-recent32-beta --codebook beta
# Other draws of the random signs (the 2-bit comparison with -noflip).
perplexity tq2-recent32 tq2-recent32-seed1 --rotation-seed 1
perplexity tq2-recent32 tq2-recent32-seed2 --rotation-seed 2
# Why the signs lose at 2 bits: keys or values (probe, and flips on one side only), other draws
# of the keys' signs in the probe, and the key signs chosen per head on the first chunk.
signs_probe="${OUT}/probe-ctx1024-signs.md"
if [[ ! -s "${signs_probe}" ]]; then
  "${TQKV}" perplexity -m "${MODEL}" -f "${TEXT}" --ctx 1024 --chunks 1 --probe-error \
    k2v16-recent32,k2v16-noflip-recent32,k16v2-recent32,k16v2-noflip-recent32,k2v16,k2v16-noflip,k16v2,k16v2-noflip \
    > "${signs_probe}.tmp"
  mv "${signs_probe}.tmp" "${signs_probe}"
fi
for seed in 1 2 3; do
  seed_probe="${OUT}/probe-ctx1024-signs-seed${seed}.md"
  [[ -s "${seed_probe}" ]] && continue
  "${TQKV}" perplexity -m "${MODEL}" -f "${TEXT}" --ctx 1024 --chunks 1 --rotation-seed "${seed}" \
    --probe-error k2v16-recent32 > "${seed_probe}.tmp"
  mv "${seed_probe}.tmp" "${seed_probe}"
done
keysigns_probe="${OUT}/probe-ctx1024-keysigns.md"
if [[ ! -s "${keysigns_probe}" ]]; then
  "${TQKV}" perplexity -m "${MODEL}" -f "${TEXT}" --ctx 1024 --chunks 1 \
    --probe-error k2v16-keysigns4-recent32,k2v16-keysigns8-recent32 > "${keysigns_probe}.tmp"
  mv "${keysigns_probe}.tmp" "${keysigns_probe}"
fi
for kv in tq2-noflipk-recent32 tq2-noflipv-recent32 tq2-keysigns4-recent32; do perplexity "${kv}"; done
# Key signs tied per RoPE pair (-pairsignsk) against independent signs and none, and a control
# tie of pairs the model's RoPE does not use (-halfsignsk), over four draws of the signs.
for seed in default 1 2 3; do
  seed_args=() suffix=""
  [[ "${seed}" != default ]] && seed_args=(--rotation-seed "${seed}") suffix="-seed${seed}"
  for tie in pair half; do
    tie_probe="${OUT}/probe-ctx1024-${tie}signs${suffix}.md"
    [[ -s "${tie_probe}" ]] && continue
    formats="k2v16-halfsignsk-recent32"
    [[ "${tie}" == pair ]] && formats="k2v16-recent32,k2v16-noflip-recent32,k2v16-pairsignsk-recent32"
    "${TQKV}" perplexity -m "${MODEL}" -f "${TEXT}" --ctx 1024 --chunks 1 "${seed_args[@]}" \
      --probe-error "${formats}" > "${tie_probe}.tmp"
    mv "${tie_probe}.tmp" "${tie_probe}"
  done
done
perplexity tq2-pairsignsk-recent32
perplexity tq2-pairsignsk-recent32 tq2-pairsignsk-recent32-seed2 --rotation-seed 2
for p in 0 1 2; do generate tq4-recent4 "${p}"; generate tq4-recent16 "${p}"; done
# Key signs chosen per (layer, KV head) offline (--calibrate-key-signs, --key-signs) on a text
# disjoint from the evaluated one: the book from the first line break in its last 400,000
# bytes (bytes 795,487 to the end; the evaluated windows, at most 4 x 2048 tokens, lie in its
# first 40,000 bytes). Each choice goes to key-signs-NAME.json, its table to key-signs-NAME.md.
CALIB_TEXT="${CALIB_TEXT:-${TMPDIR:-/tmp}/tqkv-moby-dick-tail.txt}"
tail -c 400000 "${TEXT}" | tail -n +2 > "${CALIB_TEXT}"
# calibrate KV NAME CANDIDATES [EXTRA OPTIONS...]: on 2 windows of 1024 tokens of the
# calibration text (CAL_FILE and CAL_CHUNKS choose another text and window count).
calibrate() {
  local kv="$1" name="$2" n="$3" out="${OUT}/key-signs-$2"
  shift 3
  [[ -s "${out}.json" ]] && return 0
  echo "== calibrate key signs ${name}" >&2
  "${TQKV}" perplexity -m "${MODEL}" -f "${CAL_FILE:-${CALIB_TEXT}}" --kv "${kv}" --ctx 1024 \
    --chunks "${CAL_CHUNKS:-2}" --calibrate-key-signs "${n}" --save-key-signs "${out}.json.tmp" \
    "$@" > "${out}.md.tmp"
  mv "${out}.md.tmp" "${out}.md"
  mv "${out}.json.tmp" "${out}.json"
}
# key_signs_probe NAME [FORMAT]: the keys' attention error on the evaluated text with that
# choice (FORMAT: default k2v16-recent32).
key_signs_probe() {
  local out="${OUT}/probe-ctx1024-keysigns-$1.md"
  [[ -s "${out}" ]] && return 0
  "${TQKV}" perplexity -m "${MODEL}" -f "${TEXT}" --ctx 1024 --chunks 1 \
    --key-signs "${OUT}/key-signs-$1.json" --probe-error "${2:-k2v16-recent32}" > "${out}.tmp"
  mv "${out}.tmp" "${out}"
}
# Each choice with the default signs on the values, and with none (-noflipv), the values of the
# no-flip baseline: the choice is made on the keys alone (f16 values).
for choice in tq2-recent32-c5 tq2-recent32-c9 tq2-recent32-c5-layer; do
  n="${choice#tq2-recent32-c}"
  n="${n%-layer}"
  extra=()
  [[ "${choice}" == *-layer ]] && extra=(--per-layer-key-signs)
  calibrate tq2-recent32 "${choice}" "${n}" "${extra[@]}"
  key_signs_probe "${choice}"
  for kv in tq2-recent32 tq2-noflipv-recent32; do
    perplexity "${kv}" "${kv}-keysigns-${choice#tq2-recent32-}" --key-signs "${OUT}/key-signs-${choice}.json"
  done
  if [[ "${choice}" == tq2-recent32-c5 ]]; then
    for kv in tq2-recent32 tq2-noflipv-recent32; do
      OUT="${OUT}/chunks4" CHUNKS=4 perplexity "${kv}" "${kv}-keysigns-c5" \
        --key-signs "${OUT}/key-signs-${choice}.json"
    done
  fi
done
# The oracle: the choice made on the probe's own 1,024 tokens of the evaluated text.
CAL_FILE="${TEXT}" CAL_CHUNKS=1 calibrate tq2-recent32 oracle-tq2-recent32-c5 5
calibrate tq3-recent4 tq3-recent4-c5 5
perplexity tq3-recent4 tq3-recent4-keysigns-c5 --key-signs "${OUT}/key-signs-tq3-recent4-c5.json"
calibrate tq4-recent8 tq4-recent8-c5 5
perplexity tq4-recent8 tq4-recent8-keysigns-c5 --key-signs "${OUT}/key-signs-tq4-recent8-c5.json"
# The 3-bit keys in the probe, with the choice and with plain and default signs.
key_signs_probe tq3-recent4-c5 k3v16-recent4
k3_probe="${OUT}/probe-ctx1024-signs-k3-recent4.md"
if [[ ! -s "${k3_probe}" ]]; then
  "${TQKV}" perplexity -m "${MODEL}" -f "${TEXT}" --ctx 1024 --chunks 1 \
    --probe-error k3v16-recent4,k3v16-noflip-recent4 > "${k3_probe}.tmp"
  mv "${k3_probe}.tmp" "${k3_probe}"
fi
# The 9-candidate 2-bit choice and the 3- and 4-bit choices on 4 windows too.
for kv in tq2-recent32 tq2-noflipv-recent32; do
  OUT="${OUT}/chunks4" CHUNKS=4 perplexity "${kv}" "${kv}-keysigns-c9" \
    --key-signs "${OUT}/key-signs-tq2-recent32-c9.json"
done
OUT="${OUT}/chunks4" CHUNKS=4 perplexity tq4-recent8 tq4-recent8-keysigns-c5 \
  --key-signs "${OUT}/key-signs-tq4-recent8-c5.json"
OUT="${OUT}/chunks4" CHUNKS=4 perplexity tq3-recent4
OUT="${OUT}/chunks4" CHUNKS=4 perplexity tq3-recent4 tq3-recent4-keysigns-c5 \
  --key-signs "${OUT}/key-signs-tq3-recent4-c5.json"
# The closest calls again on 4 windows (6,140 scored tokens), in their own folder.
for kv in f16 tq4 tq4-recent4 tq4-recent8 tq4-recent16 tq2-recent32 tq2-noflip-recent32 \
    tq3-noflip-recent4 tq4-noflip-recent8; do
  OUT="${OUT}/chunks4" CHUNKS=4 perplexity "${kv}"
done
# Greedy generation of the 2-bit settings (the fix against the no-flip baseline and the default).
for p in 0 1 2; do
  generate tq2-recent32 "${p}"
  generate tq2-noflip-recent32 "${p}"
  generate tq2-noflipv-recent32 "${p}" tq2-noflipv-recent32-keysigns-c9 \
    --key-signs "${OUT}/key-signs-tq2-recent32-c9.json"
done
# The 2-bit comparison on 8 windows (12,280 scored tokens; windows 5-8 unseen before the choice).
for kv in f16 tq2-noflip-recent32 tq2-recent32; do
  OUT="${OUT}/chunks8" CHUNKS=8 perplexity "${kv}"
done
for kv in tq2-recent32 tq2-noflipv-recent32; do
  OUT="${OUT}/chunks8" CHUNKS=8 perplexity "${kv}" "${kv}-keysigns-c9" \
    --key-signs "${OUT}/key-signs-tq2-recent32-c9.json"
done
echo "done" >&2
