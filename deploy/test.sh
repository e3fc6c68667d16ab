#!/usr/bin/env bash
# kvtier tests on a fresh Debian 12 machine: install the dependencies,
# build into build/ (RelWithDebInfo) and run every ctest label (unit,
# integration, fuzz, gpu; GPU tests skip themselves where no GPU is found).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

./deploy/install-deps.sh
cmake -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j"$(nproc)"
ctest --test-dir build --output-on-failure -j2
