# Developer entry points.  `make test`, `make lint` (what .ci/run checks) and `make bench`
# (every benchmark in turn; each prints a table and writes bench/results/NAME.json, see
# bench/README.md).  Override the variables on the command line, e.g.
#   make bench NICE="nice -n 19"          # on a machine shared with a training job
#   make bench-peer PEER_COUNT=20 PEER_BUNDLE=/path/to/build/local-cpu
PYTHON ?= python3
NICE ?=
# bench scripts import the engine from this checkout, installed or not
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

PEER_BUNDLE ?= runs/nameplates/build/local-cpu
PEER_COUNT ?= 100
THREADS ?= 2

BENCHES := bench-rerun bench-compress bench-synth bench-train bench-peer

.PHONY: bench $(BENCHES) test lint
# Benchmarks time things: never run two at once, even under `make -j`.
.NOTPARALLEL:

bench: $(BENCHES)

bench-rerun:
	$(NICE) $(PYTHON) bench/rerun_overhead.py

bench-compress:
	$(NICE) $(PYTHON) bench/compress.py --recognizer --threads $(THREADS)

bench-synth:
	$(NICE) $(PYTHON) bench/synth_speed.py

bench-train:
	$(NICE) $(PYTHON) bench/train_throughput.py --threads $(THREADS)

# Needs a built bundle (`recipe run recipes/nameplates.yaml`) and `pip install rapidocr==3.10.0`;
# without rapidocr it scores the bundle alone and says why.
bench-peer:
	$(NICE) $(PYTHON) bench/peer.py --bundle $(PEER_BUNDLE) --count $(PEER_COUNT) --threads $(THREADS)

test:
	$(NICE) $(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m engine.cli validate recipes/*.yaml
	ruff check engine tests bench
	mypy
	lint-imports
