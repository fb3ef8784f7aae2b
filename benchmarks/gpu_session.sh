#!/usr/bin/env bash
# The GPU benchmarks in one call: AMP (bf16) training steps of whole mammograms at 1152 x 896 with their peak
# memory, ViT-B/16, a two-view model in bf16, and mammobench's training loop against a plain one, each measured
# against its plain PyTorch + timm baseline in the same run (bench_whole_image.py, bench_train.py).
#
#   benchmarks/gpu_session.sh wheels          # on a machine with pip and the package registry: the Python packages
#                                             # mammobench needs beyond a stock PyTorch image, into .whl/ (ignored)
#   benchmarks/gpu_session.sh run [OUT_DIR]   # on the GPU machine, in the repository root: logs and JSON to OUT_DIR
#
# Sized to end within ~8 minutes on one H100/H200 (each step has its own time limit, and every log is written as
# it goes, so a step cut short still leaves what it measured). DEVICE=cpu SMALL=1 runs the same steps at toy sizes
# on a CPU, to check the script itself. Numbers go to docs/benchmarks.md with the card, driver and date it prints.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "wheels" ]; then
  # pydantic and its parts (with a typing_extensions new enough for it) are all mammobench imports that a stock
  # PyTorch + timm + Lightning image lacks for these benchmarks (pydicom too, for a header read on a path that meets
  # a DICOM); the versions are this environment's, the wheels for the GPU machine's Python (3.12 by default).
  py=${PYTHON:-.venv/bin/python}
  pins=$("$py" -m pip list --format=freeze 2>/dev/null \
    | grep -iE '^(pydantic|pydantic[-_]core|annotated[-_]types|typing[-_]inspection|typing[-_]extensions|pydicom)==')
  [ -n "$pins" ] || { echo "no pydantic in $py's environment: install the project first (make install)"; exit 1; }
  mkdir -p .whl
  # shellcheck disable=SC2086
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $pins \
    && ls .whl
  exit
fi
[ "${1:-}" = "run" ] || { echo "usage: $0 wheels | run [OUT_DIR]"; exit 2; }

out=${2:-${OUT:-/tmp/mammobench_gpu}}
mkdir -p "$out"
py=${PYTHON:-python3}
if ! "$py" -c "import pydantic, pydicom" 2>/dev/null; then  # a stock PyTorch image: the wheels from `wheels`
  ls .whl/*.whl >/dev/null 2>&1 || { echo "$py lacks pydantic/pydicom and .whl/ is empty: run '$0 wheels' first"; exit 1; }
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/mammobench_site \
    .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/mammobench_site
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
device=${DEVICE:-cuda}
if [ -n "${SMALL:-}" ]; then  # toy sizes: checks the script, measures nothing
  big=128x96; vit=64; batch=2; vbatch=2; steps="--steps 1 --warmup 1"; train="--models resnet18 --size 64 --n 32 --batch 8"
else
  big=1152x896; vit=224; batch=8; vbatch=64; steps="--steps 8 --warmup 3"
  train="--models resnet50 vit_base_patch16_224 --size 224 --n 512 --batch 64"
fi

step() {  # step NAME SECONDS COMMAND...: one benchmark, its output in OUT/NAME.log, cut at SECONDS
  local name=$1 limit=$2; shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit} s): $*"
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  grep -E '^(#|\|)' "$out/$name.log" || tail -5 "$out/$name.log"
  [ $rc -eq 0 ] || echo "!! $name ended with rc $rc (124 = its time limit)"
}

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  "$py" -c "import torch, timm, lightning; print('torch', torch.__version__, 'timm', timm.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
} | tee "$out/machine.txt"

# shellcheck disable=SC2086
step whole_1152x896 180 "$py" benchmarks/bench_whole_image.py --device "$device" --models resnet50 efficientnet_b0 \
  --sizes "$big" --batches "$batch" --ckpt off on $steps --out "$out/whole_1152x896.json"
# shellcheck disable=SC2086
step vit_b16 75 "$py" benchmarks/bench_whole_image.py --device "$device" --models vit_base_patch16_224 \
  --sizes "$vit" --batches "$vbatch" --ckpt off $steps --out "$out/vit_b16.json"
# shellcheck disable=SC2086
step two_view_bf16 75 "$py" benchmarks/bench_whole_image.py --device "$device" --models efficientnet_b0 --views 2 \
  --sizes "$big" --batches $((batch / 2)) --ckpt off $steps --out "$out/two_view_bf16.json"
# shellcheck disable=SC2086
step train_loop 160 "$py" benchmarks/bench_train.py --device "$device" $train --epochs 3 --repeats 2
echo "== done $(date -u +%H:%M:%S); logs in $out"
