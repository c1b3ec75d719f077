# landscope — README command 1: `make run`; README command 2: `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SWEEP  ?= optimizer=sgd,adam,momentum seed=0,1,2,3,4
SWEEP_DIR ?= outputs/sweeps/default

.PHONY: install run test test-fast notebooks bench device-wheels clean

install: $(STAMP)

# A fresh virtual environment with landscope (editable) and the test tools.
# Plain torch/torchvision requirements resolve to a matching pair; the import
# check below fails loudly if they do not (e.g. a CPU-only torch without torchvision ops).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip >/dev/null
	$(PY) -m pip install -e ".[test]"
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

# The main job: the default 15-job sweep on MNIST-1D (resumes if interrupted), then its
# report (measures against test error; path printed at the end).
# The report is written even when a job failed (it lists the failed jobs); the runner's
# exit code is kept.
run: install
	status=0; $(PY) -m runner -m $(SWEEP) || status=$$?; \
	$(PY) -m runner.report $(SWEEP_DIR) && exit $$status

# ruff (its rules in pyproject.toml), then the whole suite, slow tests included, on every
# core with pytest-xdist (`-n auto`: one worker per core; TEST_WORKERS=1 for one process). --dist loadfile keeps a test file on one
# worker, so its module fixtures (trained jobs, sweeps) are built once.
TEST_WORKERS ?= auto
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: install
	$(PY) -m ruff check
	$(PYTEST)

# Everything except the end-to-end tests marked slow.
test-fast: install
	$(PYTEST) -m "not slow"

# The tutorial notebooks (notebooks/NN_*.py, jupytext percent format, committed without
# outputs): each converted and executed top to bottom in a kernel of the venv's Python; the
# executed .ipynb with their figures go to notebooks/_build/, what they compute to
# notebooks/_out/ (both git-ignored). Exits 1 if a cell fails.
notebooks: install
	$(PY) scripts/run_notebooks.py --out notebooks/_build

# The pure-Python packages the device machine's image lacks (it has PyTorch, NumPy, SciPy,
# pandas, statsmodels, pytest; nothing can be fetched there), as wheels in .whl/ (git-ignored)
# for scripts/device_check.sh: the venv's versions, and PyHessian 0.1 for scripts/bench_gpu.py.
DEVICE_PACKAGES := hydra-core omegaconf antlr4-python3-runtime mnist1d
device-wheels: install
	rm -rf .whl && mkdir -p .whl
	$(PY) -m pip wheel -q --no-deps -w .whl PyHessian==0.1 \
	    $$($(PY) -m pip freeze | grep -iE '^($(subst $(eval) ,|,$(DEVICE_PACKAGES)))==')
	ls .whl

# The benchmarks: training-loop overhead, the curvature probes against PyHessian,
# hessian-eigenthings and curvlinops, and landscape slices against the forward-pass floor
# and loss-landscapes (the peers are installed from the `bench` extra on first use).
bench: $(VENV)/.bench-installed
	$(PY) scripts/bench_train.py
	$(PY) scripts/bench_probes.py
	$(PY) scripts/bench_geometry.py
	$(PY) scripts/bench_launchers.py

$(VENV)/.bench-installed: $(STAMP)
	$(PY) -m pip install -e ".[test,bench]"
	$(PY) -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $@

clean:
	rm -rf outputs .pytest_cache build dist src/*.egg-info notebooks/_out notebooks/_build
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
