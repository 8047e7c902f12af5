#!/usr/bin/env bash
# Append trial: tests, sanitizers on Cuda.Append*, old (HEAD) / new alternated 3x, ncu of the first tensor-core append kernel of each. usage: app3.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version --format=csv
$B/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "tests rc $?"; tail -1 /tmp/$R/test.log; grep -E "^append|FAILED|Failure|tie" /tmp/$R/test.log | head -20
for tool in memcheck racecheck; do timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter='Cuda.Append*' > /tmp/$R/$tool.log 2>&1; echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | tail -2; done
for k in 1 2 3; do for v in old new; do bin=$B/$v/bench_cuda; [[ $v == new ]] && bin=$B/bench_cuda
  $bin --grid issue --formats tq4 --batch 1 --context 4096 --append > /tmp/$R/$v-$k.md 2>&1; echo "$v-$k rc $?"; grep "^| append tq4" /tmp/$R/$v-$k.md; done; done
M=smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,gpu__time_duration.sum,smsp__average_warp_latency_issue_stalled_short_scoreboard.ratio,smsp__average_warp_latency_issue_stalled_wait.ratio,smsp__average_warp_latency_issue_stalled_mio_throttle.ratio,smsp__average_warp_latency_issue_stalled_long_scoreboard.ratio,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,smsp__inst_executed_op_shared_ld.sum
for v in old new; do bin=$B/$v/bench_cuda; [[ $v == new ]] && bin=$B/bench_cuda
  timeout 120 ncu -k regex:"append_mma_kernel" --launch-count 1 --metrics $M $bin --grid issue --formats tq4 --batch 1 --context 4096 --append > /tmp/$R/ncu-$v.txt 2>&1; echo "ncu $v rc $?"; grep -E "append_mma|  [a-z0-9_]+__" /tmp/$R/ncu-$v.txt | cut -c1-150; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
