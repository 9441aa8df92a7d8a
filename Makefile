# The two commands of the README. Both create .venv on first use and install the package with
# the exact versions of constraints.txt (what CI tests), then run.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PIN := -c constraints.txt

.PHONY: setup quickstart test
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PIP) install -q -U pip
	# sam2 ships only as an sdist whose setup.py imports torch: install torch first and build
	# sam2 against it (no isolated build env, which would fetch another multi-GB torch).
	$(PIP) install -q $(PIN) torch torchvision setuptools wheel
	SAM2_BUILD_CUDA=0 $(PIP) install -q $(PIN) --no-build-isolation sam2
	$(PIP) install -q $(PIN) -e '.[test,demo,lora,deploy]'
	# Test-only reference for the BEIT-3 parity test; its pins clash with timm 1.x, hence --no-deps.
	$(PIP) install -q --no-deps --no-build-isolation torchscale==0.3.0 fairscale==0.4.0
	touch $@

# The frozen SAM's image features go to the config's embedding cache first (a rerun skips what is done).
# The fit prints a line per validation and, at its end, its speed and the per-kind table.
quickstart: setup
	@start=$$(date +%s); \
	$(VENV)/bin/evf cache-embeddings --config configs/quickstart.yaml && \
	$(VENV)/bin/evf fit --config configs/quickstart.yaml && \
	echo "make quickstart: $$(( $$(date +%s) - start )) s wall time, embedding cache included"

test: setup
	$(PY) -m pytest -q
