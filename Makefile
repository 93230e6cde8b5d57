# kws — see README.md. Every target creates the virtual environment if it is missing.
# Runs write under results/ (gitignored). The figures committed in bench/results/ and models/cascade.json
# change only through the *-commit targets.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON := $(BIN)/python
DATA ?= data
export KWS_DATA_DIR ?= $(abspath $(DATA))

.PHONY: help venv protos data train reproduce eval eval-commit demo test server client calibrate calibrate-commit sweep \
	payload coop bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

# Every environment installs from its lock in requirements/ (exact versions, sha256 of every file), never from
# pyproject.toml's ranges: a fresh machine gets the versions the README's figures were measured with.
# A changed lock rebuilds the environment from scratch, so nothing the lock dropped lingers.
PIP_LOCKED = pip install -q --require-hashes --no-deps
$(BIN)/activate: requirements/main.txt pyproject.toml
	$(PY) -m venv --clear $(VENV)
	$(BIN)/$(PIP_LOCKED) -r requirements/main.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e .
	$(BIN)/pip check
	touch $(BIN)/activate

venv: $(BIN)/activate  ## create .venv from requirements/main.txt: everything (TensorFlow included, for training)

EDGE_VENV ?= .venv-edge
$(EDGE_VENV)/bin/activate: requirements/edge.txt pyproject.toml
	$(PY) -m venv --clear $(EDGE_VENV)
	$(EDGE_VENV)/bin/$(PIP_LOCKED) -r requirements/edge.txt
	$(EDGE_VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	$(EDGE_VENV)/bin/pip check
	touch $@

.PHONY: venv-edge lock
venv-edge: $(EDGE_VENV)/bin/activate  ## create .venv-edge from requirements/edge.txt: the Pi's install (no TensorFlow, no broker) + pytest

TOOLS_VENV ?= .venv-tools
$(TOOLS_VENV)/bin/uv: requirements/tools.txt
	$(PY) -m venv --clear $(TOOLS_VENV)
	$(TOOLS_VENV)/bin/$(PIP_LOCKED) -r requirements/tools.txt

UPGRADE ?=
lock: $(TOOLS_VENV)/bin/uv  ## re-resolve requirements/*.txt, keeping pins (UPGRADE="pkg ..." or UPGRADE=all moves them); regenerates kws_rpc/proto/kws/v1 if grpcio-tools moved
	$(TOOLS_VENV)/bin/python scripts/lock.py --uv $(TOOLS_VENV)/bin/uv $(if $(UPGRADE),--upgrade $(UPGRADE)) \
		|| { rc=$$?; [ $$rc = 3 ] && $(MAKE) venv protos; }
	@git --no-pager diff --stat -- requirements/ kws_rpc/proto/ 2>/dev/null || true

protos: $(BIN)/activate  ## regenerate Python code from protos/ (grpcio-tools)
	$(PYTHON) -m kws_rpc.protogen

data: $(DATA)/mini_speech_commands/.complete  ## unpack Mini Speech Commands (../shared/data if present, else download)
$(DATA)/mini_speech_commands/.complete:
	@if [ -x ../shared/data/unpack.sh ]; then ../shared/data/unpack.sh $(DATA); \
	else $(MAKE) venv && $(BIN)/kws-data --download --dest $(DATA); fi

train: venv data  ## retrain the shipped models and their int8 siblings (about 5 h on 2 cores)
	$(BIN)/kws-train --all
	$(PYTHON) -m trainers.quantize models/big.tflite models/member_cnn.tflite models/member_dscnn.tflite models/big_listen.tflite models/big_stream.tflite

MODEL ?= little
reproduce: venv data  ## retrain MODEL (default little) by its card's train_command into results/reproduce/ and check it is the shipped file bit for bit (little: ~1 h)
	$(PYTHON) -m trainers.reproduce $(MODEL) $(ARGS)

eval: venv data  ## evaluate every shipped model on the test split (table + results/eval.json)
	$(BIN)/kws-eval $(ARGS)

eval-commit: venv data  ## make eval, refreshing the committed bench/results/eval.json
	$(BIN)/kws-eval $(ARGS) --out bench/results/eval.json

demo: venv data  ## the whole system end to end: eval, server + edge cascade, MQTT cooperative inference (-> results/)
	$(PYTHON) scripts/demo.py

.PHONY: certs
certs: certs/ca.pem  ## dev CA, server and client certificates in certs/ (gitignored; rm -r certs to renew)
certs/ca.pem:
	$(MAKE) venv && $(BIN)/kws-certs --out certs $(ARGS)

server: venv  ## gRPC :50051 + REST gateway :8080: big_int8 (the default: clips, the spec body), big_listen_int8 (clips in noise, can reject) and big_stream_int8 (verifies what kws-edge listen is unsure of); Ctrl-C stops gracefully
	$(BIN)/kws-server --model models/big_int8.tflite --model models/big_listen_int8.tflite --model models/big_stream_int8.tflite --port 50051 --gateway-port 8080

.PHONY: bench-server bench-server-commit
bench-server: venv  ## every path (kws.v1 gRPC unary/stream, V2 gRPC, REST spec, /v1/predict, V2 REST): req/s, p50/p99, CPU/request vs floor, 1-128 clients -> results/bench_server.json
	$(PYTHON) -m bench.bench_server $(ARGS)

bench-server-commit: venv  ## make bench-server, refreshing the committed bench/results/server.json
	$(PYTHON) -m bench.bench_server $(ARGS) --out bench/results/server.json

client: venv data  ## Big/Little cascade on test as the Pi runs it (REST spec; ARGS="--transport grpc --encoding logmel-q5z")
	$(BIN)/kws-edge eval $(ARGS)

calibrate: venv data  ## pick the cascade thresholds on VAL (big run locally) -> results/cascade.json
	$(BIN)/kws-calibrate --local-big $(ARGS)

calibrate-commit: venv data  ## make calibrate, installing the thresholds in models/cascade.json (what runs read)
	$(BIN)/kws-calibrate --local-big $(ARGS) --out models/cascade.json

sweep: venv data  ## accuracy vs cost over thresholds on test -> results/sweep_test.{json,png}
	$(BIN)/kws-calibrate --sweep --local-big $(ARGS)

payload: venv data  ## bytes per request per transport/payload and test accuracy -> results/payload.json
	$(BIN)/kws-payload --local-big $(ARGS)

coop: venv data  ## cooperative inference over MQTT: embedded broker + the 3 members in-process, policy chosen out of fold on train+val (models/ensemble.json)
	$(PYTHON) -m kws_rpc.lab.coop_demo --split test $(ARGS)

.PHONY: compare ensemble-weights
COMPARE_MODELS ?= models/big_int8.tflite models/member_cnn_int8.tflite models/member_dscnn_int8.tflite models/little.tflite
compare: venv data  ## paired comparison on val+test: McNemar vs big_int8, error overlap, ensembles (OOF-fitted weights) -> results/compare.json
	$(BIN)/kws-compare $(COMPARE_MODELS) --against models/big_int8.tflite --split val test $(ARGS)

ensemble-weights: venv data  ## fit the weighted policy's member weights on val alone (5-fold OOF report) into models/ensemble.json's weighted_val (the weighted entry keeps make stack's OOF weights)
	$(BIN)/kws-compare models/big_int8.tflite models/member_cnn_int8.tflite models/member_dscnn_int8.tflite \
		--split val --write-manifest models/ensemble.json $(ARGS)

.PHONY: kfold stack
KFOLD ?= results/kfold
kfold: venv data  ## retrain each ensemble member on 2 of 3 folds of train+val, for out-of-fold votes: two workers side by side (~80 min on 2 cores) -> results/kfold/
	@mkdir -p $(KFOLD)
	$(PYTHON) -m trainers.kfold --out $(KFOLD) $(ARGS) > $(KFOLD)/worker2.log 2>&1 & \
	$(PYTHON) -m trainers.kfold --out $(KFOLD) $(ARGS); wait
	$(PYTHON) -m trainers.kfold --out $(KFOLD) $(ARGS)  # exit 0 once every fold model is done

stack: venv data  ## fit the weighted policy on make kfold's out-of-fold votes into models/ensemble.json; report it on test
	$(PYTHON) -m trainers.stack --kfold $(KFOLD) --write-manifest $(ARGS)

.PHONY: bench-stream
bench-stream: venv data  ## the Pi listening to long streams: hits at 20/10/0 dB, false accepts per hour over hours of keyword-free audio, latency, CPU, bytes to the server; settings chosen on val streams, reported on test -> results/bench_stream.{json,png}
	$(PYTHON) -m bench.bench_stream $(ARGS)

.PHONY: bench-peers bench-peers-commit
PEERS := .venv-peers-kserve .venv-peers-mlserver
.venv-peers-%/bin/activate: requirements/peers-%.txt
	$(PY) -m venv --clear .venv-peers-$*
	.venv-peers-$*/bin/$(PIP_LOCKED) -r $<
	.venv-peers-$*/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

bench-peers: venv $(addsuffix /bin/activate,$(PEERS))  ## kws against KServe and MLServer on big_int8: req/s, p50/p99, CPU per request vs the floor, kws over V2 too (~28 min) -> results/bench_peers.json + .png
	$(PYTHON) -m bench.bench_peers $(ARGS)

bench-peers-commit: venv $(addsuffix /bin/activate,$(PEERS))  ## make bench-peers, refreshing the committed bench/results/peers.json and .png
	$(PYTHON) -m bench.bench_peers $(ARGS) --out bench/results/peers.json

# tests/test_v2.py's client: NVIDIA's tritonclient (it pins protobuf < 7) in an environment of its own, from its lock
# alone; kws is not installed there (its scripts in tests/support/ import only tritonclient and numpy).
.PHONY: venv-triton
TRITON_VENV ?= .venv-triton
$(TRITON_VENV)/bin/activate: requirements/triton-client.txt
	$(PY) -m venv --clear $(TRITON_VENV)
	$(TRITON_VENV)/bin/$(PIP_LOCKED) -r $<
	$(TRITON_VENV)/bin/pip check
	touch $@

venv-triton: $(TRITON_VENV)/bin/activate  ## create .venv-triton from requirements/triton-client.txt: tritonclient[http,grpc], for tests/test_v2.py

.PHONY: bench-coop bench-coop-commit
bench-coop: venv data  ## 800 test clips, 3 and 5 workers, amqtt and mosquitto -> results/bench_coop.json
	$(PYTHON) -m bench.bench_coop $(ARGS)

bench-coop-commit: venv data  ## make bench-coop, refreshing the committed bench/results/coop.json
	$(PYTHON) -m bench.bench_coop $(ARGS) --out bench/results/coop.json

test: venv data  ## run the test suite (TensorFlow checks included, in a child process)
	$(BIN)/pytest -q

.PHONY: test-fast
test-fast: venv  ## the quick loop: tests that need no data set and no TensorFlow (pytest -m fast, under a minute)
	$(BIN)/pytest -q -m fast

clean:
	rm -rf .pytest_cache build *.egg-info

.PHONY: bench-abuse
.PHONY: bench-codec bench-codec-commit
bench-codec: venv data  ## feature payloads: bytes per request vs big's accuracy (val, test), DCT_RC step sweep -> results/bench_codec.{json,png}
	$(PYTHON) -m bench.bench_codec $(ARGS)

bench-codec-commit: venv data  ## make bench-codec, refreshing the committed bench/results/codec.{json,png}
	$(PYTHON) -m bench.bench_codec $(ARGS) --out bench/results/codec.json

bench-abuse: venv  ## unary p50/p99 with 64 idle streams open, 300 half-sent bodies -> results/bench_abuse.json
	$(PYTHON) -m bench.bench_abuse $(ARGS)
