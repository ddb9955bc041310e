# Two commands from a fresh clone: `make train` (the main job) and `make test` (the default test
# run, the documentation site built with --strict, ruff). Each makes .venv first when it is
# missing: the CPU build of torch, then noisynets with every extra. Nothing else to type.
#
# torch comes from PyTorch's CPU index, so that a Linux machine does not pull the multi-GB CUDA
# build from PyPI. Where that index cannot be reached, pip fails over to the other places it is
# configured to look (a local wheel, a mirror) after two quick retries (under a second here,
# where the name does not resolve; at most 10 s a try where packets are dropped): no long loop.
# A CUDA build instead (the index for your driver, from pytorch.org; `make clean` first if
# .venv exists):   make TORCH_INDEX=https://download.pytorch.org/whl/cu126 train
# Your own torch (any index, any version):   make TORCH_INDEX= TORCH="torch==2.13.0" train

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
PY := $(VENV)/bin/python

.PHONY: train test docs lint clean

train: $(VENV)/.installed
	$(VENV)/bin/noisynets train

test: $(VENV)/.installed
	$(PY) -m pytest -q
	$(PY) -m ruff check .

docs: $(VENV)/.installed
	$(PY) -m mkdocs build --strict --site-dir site

lint: $(VENV)/.installed
	$(PY) -m ruff check .

# pyproject.toml changed (a new dependency): install again; torch stays.
# norse: a second framework's NIR importer, which the export tests run where it is installed;
# without its dependencies (its torchvision, not needed to read NIR, would pull another torch).
# Where it does not install, those tests skip.
$(VENV)/.installed: $(VENV)/.torch pyproject.toml
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps "norse==1.1.0" || echo "norse did not install: its NIR tests skip"
	touch $@

$(VENV)/.torch:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --retries 2 --timeout 10 \
		$(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	touch $@

clean:
	rm -rf $(VENV) site
