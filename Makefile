# dali_kmix: everything installs into ./.venv; nothing is needed beyond Python 3.10+, pip and g++.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU machines this project is developed on serve torch 2.14.1 from local disk.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: venv demo test test-gpu bench kernels-check clean

venv: $(STAMP)

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip setuptools wheel
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

# The main job on an embedded default: DCutMix K=3 over scikit-image's photographs.
demo: venv
	$(VENV)/bin/kmix demo --out .demo

test: venv
	$(PY) -m pytest -q

test-gpu: venv
	$(PY) -m pytest -q -m gpu

kernels-check: venv
	$(VENV)/bin/kmix kernels check

clean:
	rm -rf $(VENV) build dist *.egg-info .demo .pytest_cache
