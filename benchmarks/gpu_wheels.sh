#!/usr/bin/env bash
# Wheels of what the GPU machine's image lacks, into .gpu_wheels/ (ignored by git), for
# benchmarks/gpu_check.sh; then checks that they and the working tree fit in one device call.
#   bash benchmarks/gpu_wheels.sh [PYTHON]      # PYTHON: the project's venv (default .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-.venv/bin/python}
rm -rf .gpu_wheels
SAM2_BUILD_CUDA=0 DS_BUILD_OPS=0 "$py" -m pip wheel -q --no-deps --no-build-isolation -w .gpu_wheels \
    -r benchmarks/gpu_wheels.txt
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu_wheels -r benchmarks/gpu_wheels_cp312.txt
# A device call carries the tracked and untracked-but-not-ignored files plus the carried folder: 64 MiB.
tree=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
wheels=$(du -cb .gpu_wheels | tail -1 | cut -f1)
echo "$(ls .gpu_wheels | wc -l) wheels: $((wheels >> 20)) MiB; working tree: $((tree >> 20)) MiB; limit: 64 MiB"
if [ $((tree + wheels)) -ge $((64 << 20)) ]; then
    echo "too large for one device call" >&2
    exit 1
fi
