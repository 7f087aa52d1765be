# dali_kmix: everything installs into ./.venv; nothing is needed beyond Python 3.10+, pip and g++.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU machines this project is developed on serve torch 2.14.1 from local disk.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed
# CUDA major version of the GPU stack (DALI + CuPy extra cuda12 or cuda13): by default
# that of the torch build installed first (torch.version.cuda; a CPU-only torch gets 12).
# Override with `make test CUDA=12`; a venv built for the other one needs `make clean`.
CUDA   ?=

.PHONY: venv system-deps demo test test-gpu bench study kernels-check fuzz fuzz-deps clean

venv: $(STAMP)
	@if [ -n "$(CUDA)" ] && [ -s $(STAMP) ] && [ "$$(cat $(STAMP))" != "cuda$(CUDA)" ]; then \
	  echo "$(VENV) holds the $$(cat $(STAMP)) GPU stack, not cuda$(CUDA): run make clean first" >&2; exit 1; fi

# Debian packages: Fashion-MNIST for `kmix data fashion-mnist`, the training study and its tests.
system-deps:
	@if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	  else \
	    echo "note: Debian package dataset-fashion-mnist is not installed; its tests will skip"; \
	  fi; \
	fi

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet $(TORCH_SPEC)
	@cuda="$(CUDA)"; \
	if [ -z "$$cuda" ]; then \
	  cuda=$$($(PY) -c 'import torch; v = torch.version.cuda; print(v.split(".")[0] if v else 12)') || exit 1; \
	fi; \
	case "$$cuda" in 12) other=13;; 13) other=12;; *) echo "CUDA must be 12 or 13, got $$cuda" >&2; exit 1;; esac; \
	echo "GPU stack: extra cuda$$cuda (torch CUDA $$($(PY) -c 'import torch; print(torch.version.cuda)'))"; \
	$(PIP) uninstall --quiet -y cupy-cuda$${other}x nvidia-dali-cuda$${other}0 >/dev/null 2>&1; \
	$(PIP) install --quiet -e ".[test,cuda$$cuda]" && echo "cuda$$cuda" > $(STAMP)

# The main job on an embedded default: DCutMix K=3 over scikit-image's photographs.
demo: venv
	$(VENV)/bin/kmix demo --out .demo

test: venv system-deps
	$(PY) -m pytest -q --durations=15

# Fails (does not skip) when there is no CUDA device or CuPy/DALI cannot load, naming what is missing.
test-gpu: venv
	$(PY) -m pytest -q -m gpu --require-gpu

# The studies of the README (about 2 hours and 1.5 hours on 2 cores; both resume where they stopped).
study: venv system-deps
	$(PY) benchmarks/study_mixing.py
	$(PY) benchmarks/study_subsample.py

# Coverage-guided fuzzing under ASan/UBSan (tests/fuzz/run.py): the host kernels (libFuzzer), the native DALI
# operators (Atheris, guided by the operators' own branches) and the Hypothesis properties' long profile share
# FUZZ_SECONDS; figures, corpora and crash inputs go to build/fuzz/. Needs clang 19 with its sanitizer and
# libFuzzer runtimes (Debian: clang-19 libclang-rt-19-dev) and atheris (the fuzz extra).
FUZZ_SECONDS ?= 600
FUZZ_CXX ?= clang++-19
fuzz-deps:
	@if ! command -v $(FUZZ_CXX) >/dev/null 2>&1 || [ -z "$$($(FUZZ_CXX) -print-file-name=libclang_rt.fuzzer-x86_64.a | grep /)" ] \
	    || [ ! -e "$$($(FUZZ_CXX) -print-file-name=libclang_rt.fuzzer-x86_64.a)" ]; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang-19 libclang-rt-19-dev; \
	  else \
	    echo "make fuzz needs $(FUZZ_CXX) and its libFuzzer runtime (Debian: apt-get install clang-19 libclang-rt-19-dev)" >&2; \
	    exit 1; \
	  fi; \
	fi

fuzz: venv fuzz-deps
	$(PIP) install --quiet -e ".[fuzz]"
	nice -n 10 $(PY) tests/fuzz/run.py $(FUZZ_SECONDS) --cxx $(FUZZ_CXX)

bench: venv
	$(VENV)/bin/kmix bench

kernels-check: venv
	$(VENV)/bin/kmix kernels check

clean:
	rm -rf $(VENV) build dist *.egg-info .demo .pytest_cache
