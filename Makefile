# Two commands a new user needs: `make demo` and `make test`. Both create .venv and install into it.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch is pinned to the CPU build first: an unpinned torch would pull several GB of CUDA packages.
# torchvision is pinned to the release that pairs with it (a newer one would pull a newer, CUDA torch).
TORCH  ?= torch==2.13.0 torchvision==0.28.0
# the optional parts (setup.cfg's extras) that the tests exercise
EXTRAS ?= test,data,trust,serve,tune
# Python may write .pyc files for what these commands import (an empty value is "unset"): where the
# environment sets PYTHONDONTWRITEBYTECODE (as our CI machines do), nothing would ever be cached, and every
# Python process would compile torch from source again (the test suite: 300 s -> 440 s).
export PYTHONDONTWRITEBYTECODE :=

.PHONY: venv demo test fashion-mnist chromium onnxruntime-web clean

# --no-compile: byte-compiling every installed file (torch has thousands) took more than half of the install
# (130 s -> 56 s); Python compiles the modules it imports on first use instead (see test: below).
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-compile --upgrade pip
	$(PY) -m pip install -q --no-compile $(TORCH)
	$(PY) -m pip install -q --no-compile -e '.[$(EXTRAS)]'
	touch $@

venv: $(VENV)/.installed

# Fashion-MNIST: downloaded by the toolkit when online; on Debian the package below provides it offline.
fashion-mnist:
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist) || true; \
	fi

# The browser test (tests/test_web.py) drives Debian's Chromium; it skips itself where these are missing.
chromium:
	@if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q chromium chromium-driver \
		|| (apt-get update -q && apt-get install -y -q chromium chromium-driver) || true; \
	fi

# onnxruntime-web (the pinned npm package) into the toolkit cache, for export.py --web; offline: a note, not a failure.
onnxruntime-web: venv
	@$(PY) -m classifier.export.web || true

demo: venv fashion-mnist onnxruntime-web
	$(PY) train.py --dataset fashion_mnist --model lenet5 --epochs 2 --name demo --exist-ok
	$(PY) eval.py --checkpoint runs/demo/best.pt
	$(PY) export.py --checkpoint runs/demo/best.pt
	-$(PY) export.py --checkpoint runs/demo/best.pt --web --quantize int8
	@echo "demo outputs: runs/demo/ (checkpoints, history, report, model.onnx, web/)"
	@echo "the web page: python -m http.server -d runs/demo/web, then open http://localhost:8000/"

# One test process per core (pytest-xdist, at most 4), each with one OpenMP thread: the tests' models are
# too small to gain from more, and two threads per process on two cores would contend.
test: venv chromium onnxruntime-web
	OMP_NUM_THREADS=1 $(PY) -m pytest -n auto --maxprocesses 4 tests

clean:
	rm -rf $(VENV) build *.egg-info
