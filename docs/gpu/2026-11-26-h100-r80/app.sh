#!/usr/bin/env bash
# Append encoder check: tests, sanitizers on the append tests, old-vs-new append timing alternated, ncu counts. usage: app.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry
{
date -u; nvidia-smi --query-gpu=name,driver_version --format=csv
[[ -z "${NOTEST:-}" ]] && { $B/test_cuda --gtest_color=no > /tmp/$R/test.log 2>&1; echo "tests rc $?"; tail -3 /tmp/$R/test.log; grep -E "^append|FAILED|Failure|seed" /tmp/$R/test.log | head -20; }
[[ -z "${NOTEST:-}" ]] && for tool in memcheck racecheck; do timeout 300 compute-sanitizer --tool $tool --error-exitcode 3 $B/test_cuda --gtest_color=no --gtest_filter='Cuda.Append*' > /tmp/$R/$tool.log 2>&1; echo "$tool rc $?"; grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASSED|FAILED" /tmp/$R/$tool.log | tail -3; done
for k in 1 2 3; do for v in old new; do bin=$B/bench_cuda; [[ $v == old ]] && bin=$B/old/bench_cuda
  $bin --grid issue --formats tq4 --batch 1 --context 4096 --append > /tmp/$R/$v-$k.md 2>&1; echo "$v-$k rc $?"; grep "append" /tmp/$R/$v-$k.md; done; done
M=smsp__inst_executed.sum,sm__cycles_elapsed.avg,smsp__issue_active.avg.pct_of_peak_sustained_active,dram__bytes_read.sum,dram__bytes_write.sum,gpu__time_duration.sum,sm__warps_active.avg.pct_of_peak_sustained_active,l1tex__data_pipe_lsu_wavefronts_mem_shared.sum,smsp__inst_executed_pipe_lsu.sum
for skip in 5 27 49; do timeout 120 ncu -k regex:"append_(mma_)?kernel" --launch-skip $skip --launch-count 1 --metrics $M $B/bench_cuda --grid issue --formats tq4 --batch 1 --context 4096 --append > /tmp/$R/ncu-$skip.txt 2>&1; echo "ncu skip $skip rc $?"; grep -E "append_|inst_executed|cycles|issue_active|dram__|duration|warps_active|wavefronts|pipe_lsu" /tmp/$R/ncu-$skip.txt | cut -c1-150; done
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log
