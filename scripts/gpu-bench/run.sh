#!/usr/bin/env bash
# The GPU benchmark on one card in one go: bench_cuda (tqkv decode for each format pair, the card's
# read and copy bandwidth) and then the PyTorch SDPA peer (fp16 K/V) on the same shapes, with the
# same cold-L2 and repetition rule. Run report.py afterwards, where matplotlib is (bench/results/README.md).
#
# usage: scripts/gpu-bench/run.sh OUTDIR [BINDIR] [bench_cuda options...]
#   BINDIR holds bench_cuda (default: build-gpu-carry-bench). GRID=full|issue|quick (default full)
#   picks the grid; PEER=0 skips the peer; further options go to bench_cuda (e.g. --formats tq4,f16 --append).
# Writes OUTDIR/tqkv.json, tqkv.md (bench_cuda's table), sdpa.json, sdpa.md (the peer's table) and
# their stderr logs. Exit status: bench_cuda's, else the peer's.
set -uo pipefail
OUT=${1:?usage: scripts/gpu-bench/run.sh OUTDIR [BINDIR] [bench_cuda options...]}
BIN=${2:-build-gpu-carry-bench}
shift $(( $# >= 2 ? 2 : 1 ))
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
[[ -d "$BIN" ]] && BIN=$(cd "$BIN" && pwd)  # relative to the caller's directory, else to the repository
cd "$(dirname "$0")/../.."

start=$SECONDS
echo "== bench_cuda --grid ${GRID:-full} $*"
"$BIN/bench_cuda" --grid "${GRID:-full}" --json "$OUT/tqkv.json" "$@" >"$OUT/tqkv.md" 2>"$OUT/tqkv.err"
rc_tqkv=$?
grep -E "^[0-9]+ rows:" "$OUT/tqkv.md"
echo "bench_cuda: exit $rc_tqkv, $((SECONDS - start)) s"

rc_peer=1
if [[ ${PEER:-1} == 0 ]]; then
  echo "peer skipped (PEER=0)"
  rc_peer=0
elif [[ -s "$OUT/tqkv.json" ]]; then
  start=$SECONDS
  echo "== PyTorch SDPA peer"
  PYTHONUNBUFFERED=1 python3 scripts/gpu-bench/peer_sdpa.py "$OUT/tqkv.json" "$OUT/sdpa.json" >"$OUT/sdpa.md" 2>"$OUT/sdpa.err"
  rc_peer=$?
  echo "peer_sdpa: exit $rc_peer, $((SECONDS - start)) s"
  [[ $rc_peer -ne 0 ]] && tail -5 "$OUT/sdpa.err"
else
  echo "no $OUT/tqkv.json: peer not run"
  tail -5 "$OUT/tqkv.err"
fi
[[ $rc_tqkv -ne 0 ]] && exit "$rc_tqkv"
exit "$rc_peer"
