# The two set-up commands (README.md): `make quickstart` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install quickstart test test-fast clean

install:
	@bash scripts/install.sh $(VENV)

# Install, then train the embedded tiny model on the bundled corpus: offline, CPU, ~2 minutes.
quickstart: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/llamactl train --yaml yamls/tiny.yaml

# Install, then run the whole test suite (CPU; GPU tests skip without CUDA).
test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
