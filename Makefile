# The course's two entry points (see README.md):
#   make lab    set everything up and open the labs in JupyterLab (HEADLESS=1: execute them instead)
#   make test   set everything up and run the whole test suite (what CI runs)
VENV ?= .venv
BIN := $(VENV)/bin
# Tests train every model from scratch in a private cache, so they measure the real thing.
TEST_MODELS := $(CURDIR)/.labsupport/test-models

.PHONY: setup lab test bench labs clean

setup:
	@bash scripts/setup.sh

lab: setup
ifeq ($(HEADLESS),1)
	$(BIN)/labsupport run solutions
	$(BIN)/labsupport run labs
else
	$(BIN)/labsupport lab
endif

test:
	@bash scripts/setup.sh --test
	rm -rf $(TEST_MODELS)
	LABSUPPORT_MODELS=$(TEST_MODELS) $(BIN)/python -m pytest tests solutions --nbval-lax -p no:cacheprovider --durations=15

bench: setup
	$(BIN)/python benchmarks/train_speed.py

labs:
	$(BIN)/labsupport labs generate

clean:
	rm -rf executed .labsupport
