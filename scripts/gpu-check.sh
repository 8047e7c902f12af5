#!/usr/bin/env bash
# GPU check of the CUDA backend, in one invocation on the GPU machine:
#   1. the test suite (test_cuda: every GPU kernel against the CPU reference);
#   2. compute-sanitizer memcheck and racecheck on a reduced set of tests;
#   3. a short decode benchmark (bench_cuda) and PyTorch SDPA with fp16 K/V as the peer, same run.
# Logs go to OUTDIR; a summary is printed last.
#
# usage: scripts/gpu-check.sh OUTDIR [BINDIR]
#   BINDIR holds prebuilt test_cuda and bench_cuda (default: build-gpu-carry). Without them, and
#   with nvcc and cmake present, it builds into build-cuda first.
set -uo pipefail
OUT=${1:?usage: scripts/gpu-check.sh OUTDIR [BINDIR]}
BIN=${2:-build-gpu-carry}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."

if [[ ! -x "$BIN/test_cuda" ]]; then
  echo "== building into build-cuda (no binaries in $BIN)"
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release >"$OUT/build.log" 2>&1 &&
    cmake --build build-cuda --target test_cuda bench_cuda >>"$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  BIN=build-cuda
  [[ -x build-cuda/tests/cuda/test_cuda ]] && cp build-cuda/tests/cuda/test_cuda build-cuda/cuda/bench_cuda build-cuda/
fi

{ date -u; git rev-parse HEAD 2>/dev/null; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; } >"$OUT/device.txt" 2>&1
declare -A result

echo "== tests"
"$BIN/test_cuda" --gtest_color=no >"$OUT/test.log" 2>&1
result[tests]=$?
tail -3 "$OUT/test.log"

# A reduced set: every kernel (append, decode with 1 and many splits, merge), ring wrap, masks.
SANITIZE_FILTER='Cuda.FullyMaskedSplitsStayFinite:Cuda.RingWrapWindowSoftcapSinks:Cuda.AppendStepAndGraphReplayThenDecode:Cuda.EmptySequenceGivesZeros:Cuda.OutputTypesScaleAndLargeGroups'
for tool in memcheck racecheck; do
  echo "== compute-sanitizer $tool"
  timeout "${SANITIZER_TIMEOUT:-200}" compute-sanitizer --tool "$tool" --error-exitcode 3 "$BIN/test_cuda" --gtest_color=no \
    --gtest_filter="$SANITIZE_FILTER" >"$OUT/$tool.log" 2>&1
  result[$tool]=$?
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" "$OUT/$tool.log" | tail -3
done

echo "== bench_cuda"
# tq4 with every decode kernel side by side (plus d = 256/512, batch 32, append); the other
# formats with the shipped kernel only.
{ "$BIN/bench_cuda" --formats tq4 --kernels mma,cuda_core --extras &&
  "$BIN/bench_cuda" --formats k8v4,f16,tq3,tq2 --kernels mma &&
  echo "warm L2 (one copy): the fixed cost of a step" &&
  "$BIN/bench_cuda" --formats tq4 --kernels mma --quick --copies 1; } >"$OUT/bench.md" 2>&1
result[bench]=$?

echo "== PyTorch SDPA (fp16 K/V) peer"
PYTHONUNBUFFERED=1 python3 - >"$OUT/sdpa.md" 2>&1 <<'PY'
# SDPA decode step with fp16 K/V: q [B, 32, 1, 128], k/v [B, 8, ctx, 128] (GQA), best backend.
import statistics, torch
import torch.nn.functional as F
dev = "cuda"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
print("| peer | heads | batch | context | median us | GB/s |\n| --- | --- | --- | --- | --- | --- |")
cold = 400 << 20
for batch in (1, 8):
    for ctx in (4096, 16384, 65536):
        kv_bytes = 2 * batch * 8 * ctx * 128 * 2
        copies = max(1, -(-cold // kv_bytes))
        ks = [torch.randn(batch, 8, ctx, 128, device=dev, dtype=torch.float16) for _ in range(copies)]
        vs = [torch.randn(batch, 8, ctx, 128, device=dev, dtype=torch.float16) for _ in range(copies)]
        q = torch.randn(batch, 32, 1, 128, device=dev, dtype=torch.float16)
        for i in range(5):
            F.scaled_dot_product_attention(q, ks[i % copies], vs[i % copies], enable_gqa=True)
        reps = 100
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for i in range(reps):
            ev[i][0].record()
            F.scaled_dot_product_attention(q, ks[i % copies], vs[i % copies], enable_gqa=True)
            ev[i][1].record()
        torch.cuda.synchronize()
        us = statistics.median(a.elapsed_time(b) for a, b in ev) * 1e3
        print(f"| sdpa f16 | 32/8 | {batch} | {ctx} | {us:.1f} | {kv_bytes / us / 1e3:.0f} |")
        del ks, vs
        torch.cuda.empty_cache()
PY
result[sdpa]=$?

echo
cat "$OUT/bench.md"
echo
cat "$OUT/sdpa.md"
echo
echo "== summary (exit codes: 0 = clean)"
status=0
for k in tests memcheck racecheck bench sdpa; do
  echo "$k: ${result[$k]}"
  [[ $k != sdpa && ${result[$k]} -ne 0 ]] && status=1
done
exit $status
