# Two commands on a fresh clone: `make serve` runs the service, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL_DIR ?= model_repository
STAMP := $(VENV)/.installed

.PHONY: venv serve test export bench proto clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e ".[export,test]"
	touch $(STAMP)

venv: $(STAMP)

## Export the default models (once) into $(MODEL_DIR), then serve them on 127.0.0.1:8000. A model that cannot
## be exported (offline, a bad spec) is reported and left out; it fails only when nothing can be served.
serve: $(STAMP)
	$(PY) -m export --config models.toml --model-dir $(MODEL_DIR) --allow-partial
	RESNET_SERVE_MODEL_DIR=$(MODEL_DIR) $(PY) -m service $(SERVE_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[export,test,bench]"
	$(PY) -m benchmarks $(BENCH_ARGS)

## Regenerate the gRPC message module from service/doors/v2/proto/inference.proto.
PROTO_DIR := service/doors/v2/proto
proto: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m grpc_tools.protoc -I $(PROTO_DIR) --python_out=$(PROTO_DIR) --pyi_out=$(PROTO_DIR) \
		$(PROTO_DIR)/inference.proto

clean:
	rm -rf $(VENV) .pytest_cache
