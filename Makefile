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

## Export the default models (once) into $(MODEL_DIR), then serve them on 127.0.0.1:8000.
serve: $(STAMP)
	$(PY) -m export --config models.toml --model-dir $(MODEL_DIR)
	RESNET_SERVE_MODEL_DIR=$(MODEL_DIR) $(PY) -m service $(SERVE_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[export,test,bench]"
	$(PY) -m benchmarks $(BENCH_ARGS)

## Regenerate the gRPC message module from service/v2/proto/inference.proto.
proto: $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev]"
	$(PY) -m grpc_tools.protoc -I service/v2/proto --python_out=service/v2/proto --pyi_out=service/v2/proto \
		service/v2/proto/inference.proto

clean:
	rm -rf $(VENV) .pytest_cache
