#!/usr/bin/env bash
# The GPU side-by-side (bench/handler_calls.py) in one call on a lent GPU machine, whose python3 has torch and
# transformers but no network and not this project's set-up. Prepared here by `make gpu-kit` (build/gpu-kit: the
# demo tokenizer and the wheels that machine lacks); through the device tool:
#   run(command="bash bench/gpu_device.sh", carry=["build/gpu-kit"], timeout_s=600)
# Results: $OUT/gpu_serving.json and its log; record them here with
#   marport bench --only gpu_serving --gpu-result <files_at>/gpu_serving.json
# Arguments go to `python -m marport.bench.handler_calls` (--rehearse: the same steps on a CPU, tiny model).
set -euo pipefail
cd "$(dirname "$0")/.."
KIT=${GPU_KIT:-build/gpu-kit}  # GPU_KIT: another kit (a rehearsal on another Python)
OUT=${OUT:-build/gpu-device}
SITE=$(mktemp -d)
trap 'rm -rf "$SITE"' EXIT
mkdir -p "$OUT"
test -d "$KIT/tokenizer" || { echo "no $KIT: run 'make gpu-kit' first and carry it" >&2; exit 1; }
# One wheel at a time: a wheel this Python cannot take (the kit is for 3.12) costs only itself, and the run goes on
# without it (the standard library's JSON for orjson, a stand-in Context for TorchServe's), saying so.
for wheel in "$KIT"/wheels/*.whl; do
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$wheel" \
    || echo "warning: $(basename "$wheel") not installed: the run goes on without it" >&2
done
# The project itself (its package layout maps handlers/ and bench/ into marport.*), from this working tree.
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --upgrade \
  --target "$SITE" .
# PYTHONSAFEPATH: the installed marport, not the source folder of the same name in the current folder.
export PYTHONPATH=$SITE PYTHONSAFEPATH=1 PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import sys, torch, transformers; print('Python', sys.version.split()[0], 'torch', torch.__version__, 'transformers', transformers.__version__)"
python3 -m marport.bench.handler_calls --tokenizer "$KIT/tokenizer" --out "$OUT/gpu_serving.json" "$@" 2>&1 \
  | tee "$OUT/gpu_serving.log"
