# The two commands: `make demo` and `make test`. Both install what is missing first.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean browser

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, from the pinned CPU wheel; everything after must leave it alone.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '2.13.0' else 'torch was changed to ' + v)"
	touch $(STAMP)

test: install
	$(BIN)/lint-imports  # the floors of docs/architecture.md
	PYOPENGL_PLATFORM=egl RAY_AUTH_MODE=token $(BIN)/python -m pytest -q

demo: install
	PYOPENGL_PLATFORM=egl RAY_AUTH_MODE=token $(BIN)/cobl demo --out demo_out

# Optional: Debian's Chromium, for the gallery screenshot test (tests/test_publish.py skips without it).
browser:
	command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) demo_out
