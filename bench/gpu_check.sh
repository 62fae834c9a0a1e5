#!/usr/bin/env bash
# Issue 35's device check: one prepared script for a machine with an NVIDIA GPU, at most about 8 minutes.
# It prints the GPU and the versions, runs tests/test_cuda.py, then measures on the GPU: the toolkit against the
# plain torchvision loop (resnet18 fine-tuned at 224 px on a photo folder; vggnet on Fashion-MNIST at 28 px),
# and the `fast` recipe's time to 94% test accuracy. Everything it prints also goes to one text file
# ($OUT/gpu_check.txt, else bench/results/gpu_check.txt). Without CUDA it says so in one line and exits 0.
#
# Before (here, online): bench/gpu_prepare.sh fills bench/wheels/ and datasets/fashion_mnist/ (both git-ignored);
# the device tool carries them: carry ["bench/wheels", "datasets/fashion_mnist"], command "bench/gpu_check.sh".
# It uses the machine's own python3 (PyTorch with CUDA) and never touches the Makefile's pinned CPU torch.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    echo "gpu_check: no CUDA device here (torch.cuda.is_available() is false, or no torch): nothing to check"
    exit 0
fi
OUTDIR=${OUT:-bench/results}
mkdir -p "$OUTDIR"
exec > >(tee "$OUTDIR/gpu_check.txt") 2>&1
export PYTHONUNBUFFERED=1
step() { echo; echo "== $* ($(date +%T))"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" - <<'PYEOF'
import platform, torch
print(f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
      f"cuDNN {torch.backends.cudnn.version()}, {torch.cuda.get_device_name(0)}, bf16 {torch.cuda.is_bf16_supported()}, "
      f"{torch.cuda.device_count()} GPU(s), {__import__('os').cpu_count()} CPUs")
PYEOF

step "install (no network: carried wheels, then the project without dependencies)"
if ls bench/wheels/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu-site bench/wheels/*.whl \
        && export PYTHONPATH="/tmp/gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "(editable install refused: using PYTHONPATH)"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import classifier, albumentations, torchinfo; print('classifier', classifier.__version__, 'imports')" || exit 1
[ -f datasets/fashion_mnist/train-images-idx3-ubyte.gz ] || echo "no datasets/fashion_mnist: run bench/gpu_prepare.sh first"

step "tests/test_cuda.py"
timeout 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py

step "throughput: vggnet on Fashion-MNIST at 28 px, plain loop against the toolkit"
timeout 90 "$PY" bench/train_speed.py --device cuda --models vggnet --seconds 15 --steps 400

step "throughput: resnet18 fine-tuned at 224 px on a 1,200-photo folder (random weights: speed only)"
timeout 120 "$PY" bench/transfer_speed.py --device cuda --models resnet18 --modes finetune --images 1200 \
    --epochs 2 --img-size 224 --skip-startup

step "time to 94% test accuracy, --recipe fast"
timeout 120 "$PY" bench/time_to_accuracy.py --recipe fast --device cuda --name gpu-tta-fast --project /tmp/gpu-runs \
    --exist-ok --progress false

step "done: figures in $OUTDIR/gpu_check.txt"
