#!/usr/bin/env bash
# The GPU check as one device command (benchmarks/README.md, "GPU check"): installs the wheels that
# benchmarks/gpu_wheels.sh put in .gpu_wheels/ (carried with the working tree), then runs
# benchmarks/gpu_check.py with the arguments given here. The JSON and the log go to $OUT (what the
# device machine sends back), else to benchmarks/results/.
set -uo pipefail
cd "$(dirname "$0")/.."
site=/tmp/evf_site
start=$SECONDS
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
    .gpu_wheels/*.whl || exit 1
echo "installed $(ls .gpu_wheels/*.whl | wc -l) wheels in $((SECONDS - start)) s"
export PYTHONPATH="$PWD:$site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
results=${OUT:-benchmarks/results}
mkdir -p "$results"
python3 benchmarks/gpu_check.py --out-dir "$results" "$@" 2>&1 | tee "$results/gpu_check.log"
