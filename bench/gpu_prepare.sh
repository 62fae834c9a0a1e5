#!/usr/bin/env bash
# Fill what bench/gpu_check.sh carries to a GPU machine that reaches no package registry (run it here, online):
#   bench/wheels/            the toolkit's requirements that the machine's Python 3.12 lacks (git-ignored)
#   datasets/fashion_mnist/  Fashion-MNIST's four files, 30 MB (git-ignored)
# Then: the device tool's run, with carry ["bench/wheels", "datasets/fashion_mnist"], command bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# versions as in this venv; the GPU image has torch, torchvision, timm, onnx, onnxruntime, onnxscript, opencv,
# scikit-learn, matplotlib, tensorboard, pyyaml, tqdm, pytest (device README's package list)
WHEELS="albumentations==2.0.8 albucore==0.0.24 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
        typing-inspection==0.4.5 stringzilla==5.3.2 simsimd==6.5.16 torchinfo==1.8.0"
mkdir -p bench/wheels
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d bench/wheels $WHEELS
mkdir -p datasets/fashion_mnist
for f in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    [ -f "datasets/fashion_mnist/$f.gz" ] || cp "/usr/share/datasets/fashion-mnist/$f.gz" datasets/fashion_mnist/
done
du -sh bench/wheels datasets/fashion_mnist
