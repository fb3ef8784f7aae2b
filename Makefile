# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
# CPU-only machines get PyTorch's CPU build (about 0.9 GB in .venv instead of 6.8 GB with the CUDA libraries) when
# its index can be reached; CPU_TORCH=no keeps PyPI's default build, CPU_TORCH=yes insists on the CPU build.
CPU_TORCH   ?= auto
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if [ "$(CPU_TORCH)" = yes ] || { [ "$(CPU_TORCH)" = auto ] && ! command -v nvidia-smi >/dev/null 2>&1 \
	     && curl -sfI --max-time 5 $(TORCH_INDEX)/torch/ >/dev/null 2>&1; }; then \
	  echo "no GPU here: installing PyTorch's CPU build from $(TORCH_INDEX) (make CPU_TORCH=no for the default)"; \
	  $(PY) -m pip install -q --index-url $(TORCH_INDEX) "torch>=2.6,<3" "torchvision>=0.21"; \
	elif [ "$(CPU_TORCH)" = auto ] && ! command -v nvidia-smi >/dev/null 2>&1; then \
	  echo "no GPU here, but $(TORCH_INDEX) cannot be reached: PyPI's PyTorch (with CUDA libraries, ~6 GB more) is used"; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mammobench demo --out demo_output

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow and not browser"

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src

clean:
	rm -rf demo_output .pytest_cache
