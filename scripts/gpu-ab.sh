#!/usr/bin/env bash
# An A/B run on the GPU machine in one device call: unpacks the binaries that scripts/gpu-pack.sh
# packed, runs test_cuda and (unless SANITIZE=0) memcheck and racecheck on the decode tests, then
# each bench_cuda grid for each variant, alternated ROUNDS times, so that every variant meets the
# card in the same states. Tables go to OUTDIR/RUN-ab.tgz (a device call returns few files), the log
# and the tests' output to OUTDIR/RUN/. Medians per shape and variant:
#   python3 scripts/gpu-bench/ab_medians.py DIR new,prev   (DIR holds the unpacked ab/)
#
# usage: scripts/gpu-ab.sh OUTDIR RUN ROUNDS GRID...
#   GRID: one bench_cuda argument string, e.g. "--grid issue --formats tq4"
#   VARIANTS (default "new prev"): each NAME (no "-") or NAME:ENV=VALUE:...; NAME's binaries are the pack's
#     top level for "new", else its NAME/ folder (gpu-pack.sh BUILD NAME=DIR); ENV settings apply to
#     that variant's bench runs (trial knobs), e.g. VARIANTS="base new:TQKV_X=1" with base=new's binaries
#     when the pack has no base/ folder
#   TEST_ENV: ENV=VALUE settings for test_cuda and the sanitizers (e.g. a trial knob switched on)
#   SANITIZE_FILTER: the gtest filter of the sanitizer runs (default: six decode tests)
# e.g. (device call, carry build-gpu-pack):
#   VARIANTS="new prev" bash scripts/gpu-ab.sh $OUT r230 4 "--grid issue --formats tq4" "--grid batches --formats tq4"
set -u
[[ $# -ge 4 ]] || { sed -n '2,20p' "$0" >&2; exit 2; }
cd "$(dirname "$0")/.."
OUT=$1 RUN=$2 ROUNDS=$3
shift 3
D=$OUT/$RUN
mkdir -p "$D/ab"
B=build-gpu-carry
rm -rf $B && mkdir -p $B && tar xJf build-gpu-pack/bins.tar.xz -C $B || { echo "gpu-ab.sh: cannot unpack build-gpu-pack/bins.tar.xz" >&2; exit 2; }
FILTER=${SANITIZE_FILTER:-Cuda.AwkwardLengthsAndBatch17:Cuda.RingWrapWindowSoftcapSinks:Cuda.TwoTilesPerIterationIgnoreStaleStages:Cuda.StaleTokenCountsBeforeTheWaitAreChecked:Cuda.BatchEightTakesLonePairsAtOneBlockPerSm:Cuda.FreshRandomShapes}
read -r -a test_env <<<"${TEST_ENV:-}"

bin_dir() {  # the binaries of variant NAME
  if [[ $1 == new || ! -d $B/$1 ]]; then echo $B; else echo $B/$1; fi
}
{
  for variant in ${VARIANTS:-new prev}; do
    name=${variant%%:*}
    [[ $name == new || -d $B/$name ]] || echo "note: the pack has no $name/: variant $name runs the top-level binaries"
  done
  date -u
  nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
  env "${test_env[@]}" timeout 300 $B/test_cuda --gtest_color=no >"$D/test.log" 2>&1
  echo "test rc $?"
  grep -E "^\[  (PASSED|FAILED)|FAILED  \]|Failure" "$D/test.log" | head -20
  if [[ ${SANITIZE:-1} != 0 ]]; then
    for tool in memcheck racecheck; do
      env "${test_env[@]}" timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no \
        --gtest_filter="$FILTER" >"$D/$tool.log" 2>&1
      echo "$tool rc $?"
      grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$D/$tool.log" | head -4
    done
  fi
  date -u
  for k in $(seq 1 "$ROUNDS"); do
    for variant in ${VARIANTS:-new prev}; do
      name=${variant%%:*}
      settings=()
      [[ $variant == *:* ]] && IFS=: read -r -a settings <<<"${variant#*:}"
      g=0
      for grid in "$@"; do
        g=$((g + 1))
        read -r -a args <<<"$grid"
        env "${settings[@]}" "$(bin_dir "$name")/bench_cuda" "${args[@]}" >"$D/ab/$name-g$g-$k.md" 2>&1
        echo "$name grid $g round $k rc $?"
      done
    done
    date -u
  done
} >"$D/run.log" 2>&1
tar czf "$OUT/$RUN-ab.tgz" -C "$D" ab && rm -rf "$D/ab"
cat "$D/run.log"
