#!/usr/bin/env bash
# Installs what tqkv needs to build and test, from Debian's packages, when it is missing.
# Safe to run again: it only installs what dpkg does not already have.
set -euo pipefail

packages=(
  cmake ninja-build g++ pkg-config
  libgtest-dev libgmock-dev   # GoogleTest: the test suites
  libbenchmark-dev            # Google Benchmark: bench/
  libcli11-dev                # CLI11: the tqkv command line
  libfmt-dev                  # fmt: formatting of messages and tables
  nlohmann-json3-dev          # nlohmann-json: JSON output of tools and benchmarks
  libhwy-dev                  # Highway: portable SIMD with runtime dispatch (cpu/fast)
)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  [[ $(id -u) -eq 0 ]] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
