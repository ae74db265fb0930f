#!/usr/bin/env bash
# benchmarks/gpu.py on the device machine, in ONE call of the device tool (it copies the working tree and runs this
# in the repo root). Prepare here first: `make gpu-wheels` (vpetl.protocol needs pydantic, absent there), then:
#
#   run(command="bash benchmarks/gpu_run.sh", carry=["build/gpu-wheels"], timeout_s=560)
#
# Results come back under $OUT: result.json, section.md (paste into BENCHMARKS.md's GPU section) and log.txt.
# The benchmark itself is sized to finish in well under 8 minutes on one H100/H200; `timeout 480` stops it at 8 so
# the call keeps time to hand back what it wrote.
set -uo pipefail
OUT=${OUT:-build/gpu-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >"$OUT/nvidia-smi.csv" 2>&1
if compgen -G "build/gpu-wheels/*.whl" >/dev/null; then
  # --target + PYTHONPATH: an install beside the image's own packages, leaving them untouched.
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    build/gpu-wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/site
else
  echo "no build/gpu-wheels/*.whl: run \`make gpu-wheels\` here and carry build/gpu-wheels" >&2
fi
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout 480 python3 benchmarks/gpu.py --device cuda --out "$OUT" "$@" 2>&1 | tee "$OUT/log.txt"
