#!/usr/bin/env bash
# The bench table on a lent GPU (the `device` tool's machine: CPython 3.12 and torch preinstalled, no network).
#
# Here, first (with network):   ../shared/tools/gpu-wheelhouse.sh .whl      # wheels the GPU machine lacks
# Then, through the device tool: run command "bash tools/gpu_bench.sh" with carry [".whl"]
#   (timeout_s ~ 540: the paper rows bake 24-level textures with x4 super-resolution).
# Smoke test on a CPU:          bash tools/gpu_bench.sh --device cpu --resolutions 128 --presets default --frames 2
#
# Prints one table per AMP setting (off, then on: float16 autocast on CUDA) for the shipped model and `paper`
# at 128/256/512 output pixels; the device column names the card. Extra arguments go to every bench call.
# Then, when a data folder is there (--train-data DIR, default out/bench_data: e.g. a copy of a 64-image
# SynthPortrait folder, carried too), seconds per training step (`python -m train.bench_step`): `warm128` from the
# shipped model and from a fresh `small` generator, on the same device.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
if ! "$PY" -c "import smplx, safetensors" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/busto-site .whl/*.whl
    export PYTHONPATH=/tmp/busto-site${PYTHONPATH:+:$PYTHONPATH}
  else
    echo "gpu_bench: smplx is missing and there is no .whl folder (run ../shared/tools/gpu-wheelhouse.sh .whl here and carry .whl)" >&2
    exit 2
  fi
fi
device=cuda presets=default,paper resolutions=128,256,512 frames=10 train_data=out/bench_data extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --presets) presets=$2; shift 2 ;;
    --resolutions) resolutions=$2; shift 2 ;;
    --frames) frames=$2; shift 2 ;;
    --train-data) train_data=$2; shift 2 ;;
    *) extra+=("$1"); shift ;;
  esac
done
"$PY" -c "import torch; print('torch', torch.__version__, '| cuda', torch.cuda.is_available(), '|', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')"
for amp in "" "--amp"; do
  echo "== AMP $([ -n "$amp" ] && echo on || echo off)"
  "$PY" -m portrait_core bench --device "$device" --presets "$presets" --resolutions "$resolutions" \
    --frames "$frames" $amp "${extra[@]}"
done
if [ -d "$train_data" ]; then
  echo "== training steps ($train_data)"
  common=(data.root="$train_data" data.extra_roots= data.holdout=4 device="$device" --steps 10)
  "$PY" -m train.bench_step warm128 "${common[@]}" model.init_from=portrait_core/assets/default.safetensors
  "$PY" -m train.bench_step warm128 "${common[@]}"
else
  echo "== training steps: skipped (no data folder $train_data; pass --train-data DIR)"
fi
