#!/usr/bin/env bash
# r166: where tq3's graph steps at b8 64k lose against its single launches (v14-v17: ~185 single, 190-200 graph
# in multi-row grids). One trial binary (0d34e5a + two environment switches, trial only): TQKV_TRIAL_LATE_TABLES
# (code tables built after griddepcontrol.wait) and TQKV_TRIAL_NO_PDL (no programmatic launch attribute), against
# the same binary with neither; issue grid tq4,k8v4,tq3,tq2 (tq3 after other rows), alternated 3x. usage: env166.sh OUTDIR RUN
set -u
OUT=$1; R=$2
mkdir -p /tmp/$R/ab $OUT/$R
rm -rf build-gpu-carry; mkdir -p build-gpu-carry
tar xJf build-gpu-pack/bins.tar.xz -C build-gpu-carry
B=build-gpu-carry/trial/bench_cuda
{
date -u; nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv
for k in 1 2 3; do
  for v in base late nopdl; do
    case $v in base) E=();; late) E=(TQKV_TRIAL_LATE_TABLES=1);; nopdl) E=(TQKV_TRIAL_NO_PDL=1);; esac
    env "${E[@]}" $B --grid issue --formats tq4,k8v4,tq3,tq2 > /tmp/$R/ab/$v-$k.md 2>&1; echo "$v #$k rc $?"
    grep -E "^\| (tq4|tq3|tq2|k8v4) .*\|  +(8|1) \| +(65536|4096|16384) " /tmp/$R/ab/$v-$k.md | awk -F'|' '$5+0==128 {printf "  %s b%s %s: %s/%s\n", $2, $6+0, $7+0, $9+0, $10+0}'
  done
done
date -u
} > /tmp/$R/run.log 2>&1
tar czf $OUT/$R/$R.tgz -C /tmp $R
cat /tmp/$R/run.log | grep -E 'tq3|rc' | head -60
