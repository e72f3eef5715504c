# The course's two entry points (see README.md):
#   make lab    set everything up and open the labs in JupyterLab (HEADLESS=1: execute them instead)
#   make test   set everything up and run the whole test suite (what CI runs)
VENV ?= .venv
BIN := $(VENV)/bin
# Tests train every model from scratch in a private cache, so they measure the real thing.
TEST_MODELS := $(CURDIR)/.labsupport/test-models

.PHONY: setup lab test test-avx2 bench labs clean

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

# The same suite as a CPU without AVX-512 or native bfloat16 runs it (CI may draw such a machine):
# PyTorch, oneDNN, MKL, OpenBLAS and NumPy kernels limited to AVX2, Lab 3 in float32.
test-avx2:
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 OPENBLAS_CORETYPE=Haswell \
	NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR" LABSUPPORT_PRECISION=float32 $(MAKE) test

bench: setup
	$(BIN)/python benchmarks/train_speed.py

labs:
	$(BIN)/labsupport labs generate

clean:
	rm -rf executed .labsupport
