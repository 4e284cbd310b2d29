# offbyone: every target sets itself up first (make setup is idempotent and quick once done).
SHELL := /bin/bash
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:
# executed notebooks are results a reader opens: never delete them as intermediate files
# (.PRECIOUS on each rule's own target pattern, below; not a bare .SECONDARY, which would stop
# make from rebuilding a missing report notebook whenever an older PDF exists)

VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done
PYTHON ?= python3
# CPU machines get the CPU build of torch. On a laptop where PyPI would hand out the CUDA build,
# add: TORCH_CPU_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_VERSION      ?= 2.13.0
TORCH_CPU_PIP_ARGS ?=
TORCH_GPU_PIP_ARGS ?=
PYTEST_ARGS        ?=

PDF      := build/paper/offbyone.pdf
TEX_PKGS := texlive-latex-base texlive-latex-recommended texlive-fonts-recommended lmodern \
            latexmk texlive-latex-extra
# The profile: gpu where CUDA is usable, else cpu (PROFILE=smoke|cpu|gpu overrides).
DETECT_PROFILE = $(shell $(PY) -c 'import torch; print("gpu" if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo cpu)
# Runs at once: 4 where CUDA is usable (the small models leave a GPU idle between steps, and
# each notebook's start-up is CPU work; `make gpu-check` measures the gain), else 2 of one
# thread each (two one-thread testbed runs side by side took 12% less time than two two-thread
# runs in turn on a 2-core machine: LOG.md). JOBS=N overrides; the benchmarks always run alone
# with every thread.
DETECT_JOBS = $(shell $(PY) -c 'import torch; print(4 if torch.cuda.is_available() else 2)' 2>/dev/null || echo 2)
ON_CPU = $(shell $(PY) -c 'import torch; print("" if torch.cuda.is_available() else "1")' 2>/dev/null || echo 1)

.PHONY: FORCE help setup test test-all test-slow data reproduce pipeline figures paper bench gpu-check tex lab clean \
        gpu-bundle gpu-bundle-rehearsal gpu-study gpu-node gpu-unpack

help:
	@echo "make reproduce  everything: set-up, data, every run of the profile, measurement,"
	@echo "                figures, tables and the paper ($(PDF)); PROFILE=smoke|cpu|gpu"
	@echo "make test       the fast test suite (sets itself up on first use)"
	@echo "make test-all   the fast and the slow tests"
	@echo "make data       prepare the Shakespeare corpus (data/shakespeare_char)"
	@echo "make figures    tables, figures and macros from existing results (PROFILE=...)"
	@echo "make paper      the PDF from the committed results (results/cpu, or PROFILE=...),"
	@echo "                in minutes, with no training"
	@echo "make bench      attention and training benchmarks, their figure and tables"
	@echo "make gpu-check  on a CUDA machine, in minutes (4 on an H200): CUDA kernel tests, attention"
	@echo "                and training benchmarks, the gpu profile's estimated wall time"
	@echo "make gpu-bundle on a networked machine: build/gpu-bundle/, all an offline GPU node"
	@echo "                lacks (wheels, the repository); on the node: bash run.sh"
	@echo "make gpu-bundle-rehearsal  the bundle installed and run on this CPU, network refused"
	@echo "make gpu-study  the gpu profile's every run in one process per stage (JOBS=4 at once)"
	@echo "make gpu-node OUT=...  on a GPU node: its one script (smoke, study, sweep; 11 minutes at most)"
	@echo "make gpu-unpack ARCHIVE=...  a node's archive into runs/, then results/gpu and figures"
	@echo "make lab        open JupyterLab on notebooks/ (installs it on first use)"
	@echo "make setup      create $(VENV) and install everything"
	@echo "make clean      remove runs, build outputs and rehearsals' results (keeps $(VENV),"
	@echo "                data and the committed results/)"

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@if nvidia-smi >/dev/null 2>&1; then \
	  echo "NVIDIA GPU found: installing the CUDA build of torch==$(TORCH_VERSION)"; \
	  $(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_GPU_PIP_ARGS); \
	else \
	  echo "no NVIDIA GPU: installing the CPU build of torch==$(TORCH_VERSION)"; \
	  $(PY) -m pip install -q "torch==$(TORCH_VERSION)" $(TORCH_CPU_PIP_ARGS); \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP)
	$(PY) -m pytest -q -m "" $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

data: $(STAMP)
	$(PY) -m offbyone.data --corpus shakespeare --data-root data

# ------------------------------------------------------------------------------------------
# The pipeline. `reproduce` and `figures` call make again once the environment exists, so that
# the profile's run list can be read from configs/$(PROFILE).yaml by the package itself.

# REHEARSAL=1: the profile's every stage and run at toy sizes, on any machine, into folders of
# its own (profile PROFILE-rehearsal; see offbyone.profiles.REHEARSAL_CUTS), 2 runs at once of
# one thread each (its runs are mostly process start-up, which two CPU cores overlap)
# REHEARSAL=quick: CI's cut form, the first two variants and the first seed of each profile
THE_PROFILE = $(or $(PROFILE),$(DETECT_PROFILE))$(if $(filter 1,$(REHEARSAL)),-rehearsal)$(if $(filter quick,$(REHEARSAL)),-quickrehearsal)

reproduce: $(STAMP) tex
	@$(if $(or $(REHEARSAL),$(ON_CPU)),OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}) $(MAKE) --no-print-directory -j$(or $(JOBS),$(if $(REHEARSAL),2,$(DETECT_JOBS))) PIPELINE=1 PROFILE=$(THE_PROFILE) REHEARSAL= pipeline

figures: $(STAMP)
	$(eval P := $(THE_PROFILE))
	$(PY) -m offbyone.pipeline nb report notebooks/04_report.ipynb build/$(P)/notebooks/04_report.ipynb -p profile $(P)
	@if [ -f results/$(P)/bench/bench.json ]; then \
	  $(PY) -m offbyone.pipeline nb bench notebooks/05_bench.ipynb build/$(P)/notebooks/05_bench.ipynb -p profile $(P); fi
	@echo $(P) > paper/generated/.profile

bench: $(STAMP)
	$(eval P := $(THE_PROFILE))
	$(PY) -m offbyone.bench --for-profile $(P)
	$(PY) -m offbyone.pipeline nb bench notebooks/05_bench.ipynb build/$(P)/notebooks/05_bench.ipynb -p profile $(P)

# exits 2 with a message where torch sees no CUDA GPU
gpu-check: $(STAMP)
	$(PY) -m offbyone.gpu_check

# The GPU study without notebooks (offbyone.study): on the node itself, or through the bundle
# (offbyone.bundle), whose run.sh installs from wheels with no network; what the node hands
# back is one archive, unpacked here into runs/ before the report writes results/gpu/.
BUNDLE ?= build/gpu-bundle
gpu-bundle: $(STAMP)
	$(PY) -m offbyone.bundle make --out $(BUNDLE)

gpu-bundle-rehearsal: $(STAMP)
	$(PY) -m offbyone.bundle rehearse --work build/gpu-bundle-rehearsal

gpu-study: $(STAMP)
	$(PY) -m offbyone.study run $(or $(PROFILE),gpu) --jobs $(or $(JOBS),$(DETECT_JOBS))

# The GPU node's one prepared script (issue 38): kernel tests and a smoke, the gpu study, the
# kernel sweep, each under a hard limit (11 minutes in all); OUT comes back. REHEARSAL=1: the
# same on this CPU at toy sizes.
gpu-node: $(STAMP)
	$(PY) -m offbyone.gpu_check.node --out $(or $(OUT),build/gpu-node) $(if $(REHEARSAL),--cpu-rehearsal --jobs 1 --ensemble 1)

gpu-unpack: $(STAMP)
	@test -n "$(ARCHIVE)" || { echo "usage: make gpu-unpack ARCHIVE=path/to/study.tar.gz"; exit 1; }
	$(PY) -m offbyone.study unpack $(ARCHIVE)
	@$(MAKE) --no-print-directory figures PROFILE=$$($(PY) -c 'import json,sys,tarfile; print(json.load(tarfile.open(sys.argv[1]).extractfile("study.json"))["profile"])' $(ARCHIVE))

# The paper from a profile's committed results (results/$(PAPER_PROFILE)/), with no training:
# the report and bench notebooks, then LaTeX; it says which commit produced the numbers and
# warns when the code that trained and measured them, or their profiles, have changed since.
PAPER_PROFILE = $(or $(PROFILE),cpu)
paper: $(STAMP) tex
	@test -f results/$(PAPER_PROFILE)/runs.csv || { echo "results/$(PAPER_PROFILE)/ holds no results: run make reproduce PROFILE=$(PAPER_PROFILE)"; exit 1; }
	@$(MAKE) --no-print-directory figures PROFILE=$(PAPER_PROFILE)
	@$(MAKE) --no-print-directory $(PDF)
	@$(PY) -m offbyone.pipeline provenance $(PAPER_PROFILE)
	@echo "paper: $(PDF) (profile $(PAPER_PROFILE))"

tex:
	@if ! command -v latexmk >/dev/null 2>&1 || ! kpsewhich cleveref.sty >/dev/null 2>&1; then \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing TeX Live from Debian packages (about 2 minutes)"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(TEX_PKGS) poppler-utils; \
	  else \
	    echo "TeX Live is missing. Install: $(TEX_PKGS) (Debian/Ubuntu names), or a TeX distribution with latexmk, booktabs, cleveref and natbib"; exit 1; \
	  fi; \
	fi

ifdef PIPELINE
# a rehearsal's paper is its own file, beside the real one
ifneq ($(findstring rehearsal,$(PROFILE)),)
PDF := build/paper/offbyone-$(PROFILE).pdf
endif
RUNS   := $(shell $(PY) -m offbyone.profiles runs $(PROFILE))
ifeq ($(RUNS),)
$(error could not read the runs of profile '$(PROFILE)' (see the message above))
endif
TESTBED      := $(shell $(PY) -m offbyone.profiles testbed $(PROFILE))
ABLATIONS    := $(shell $(PY) -m offbyone.profiles ablations $(PROFILE))
# a retrofit (profile key `retrofit:`) starts from another profile's runs, trained first
SOURCES      := $(shell $(PY) -m offbyone.profiles sources $(PROFILE))
SOURCE_PROFILE := $(firstword $(SOURCES))
SOURCE_TRAINS  := $(foreach r,$(wordlist 2,$(words $(SOURCES)),$(SOURCES)),build/$(SOURCE_PROFILE)/notebooks/02_train-$(r).ipynb)
COMPANION_MEASURES := $(foreach p,$(TESTBED) $(ABLATIONS),\
  $(foreach r,$(shell $(PY) -m offbyone.profiles runs $(p)),build/$(p)/notebooks/03_measure-$(r).ipynb))
NB      := build/$(PROFILE)/notebooks
TIMINGS := build/$(PROFILE)/timings.jsonl
RUN_NB   = $(PY) -m offbyone.pipeline nb $(1) notebooks/$(2).ipynb $@ --timings $(TIMINGS)
# a change to what is measured measures again (measure() skips results of the current version)
MEASURE_CODE := lib/offbyone/measure.py lib/offbyone/metrics.py lib/offbyone/quant.py
variant  = $(firstword $(subst -s, ,$(1)))
seed     = $(lastword $(subst -s, ,$(1)))

pipeline: $(PDF)
	@echo $(PROFILE) > paper/generated/.profile
	@echo "paper: $(PDF) (profile $(PROFILE))"

# paper/generated holds one profile's tables and macros: when it holds another's (or none), the
# report and bench notebooks run again even if their executed copies are up to date
ifneq ($(shell cat paper/generated/.profile 2>/dev/null),$(PROFILE))
REGENERATE := FORCE
endif
FORCE:

report: $(NB)/04_report.ipynb

# The data, train and measure notebooks of a profile; instantiated for the profile and for its
# companions, the synthetic testbed profile (`testbed:`) and the ablation profiles
# (`ablations:`), whose runs the report puts beside the main ones.
# a profile's file (a rehearsal's is the rehearsed profile's)
profile_file = configs/$(patsubst %-rehearsal,%,$(patsubst %-quickrehearsal,%,$(1))).yaml
define STUDY_RULES
build/$(1)/notebooks/01_prepare_data.ipynb: notebooks/01_prepare_data.ipynb $(call profile_file,$(1))
	$$(call RUN_NB,data,01_prepare_data) $$(shell $(PY) -m offbyone.profiles data-params $(1))

build/$(1)/notebooks/02_train-%.ipynb: notebooks/02_train.ipynb build/$(1)/notebooks/01_prepare_data.ipynb $(call profile_file,$(1))
	$$(call RUN_NB,train,02_train) -p profile $(1) -p variant $$(call variant,$$*) -p seed $$(call seed,$$*)

.PRECIOUS: build/$(1)/notebooks/02_train-%.ipynb build/$(1)/notebooks/03_measure-%.ipynb

build/$(1)/notebooks/03_measure-%.ipynb: notebooks/03_measure.ipynb build/$(1)/notebooks/02_train-%.ipynb $(MEASURE_CODE)
	$$(call RUN_NB,measure,03_measure) -p profile $(1) -p variant $$(call variant,$$*) -p seed $$(call seed,$$*)
endef
$(foreach p,$(PROFILE) $(TESTBED) $(ABLATIONS) $(SOURCE_PROFILE),$(eval $(call STUDY_RULES,$(p))))
ifneq ($(SOURCE_TRAINS),)
$(foreach r,$(RUNS),$(NB)/02_train-$(r).ipynb): $(SOURCE_TRAINS)
endif

# the benchmarks run before the report, which records their time and speed in provenance.json
BENCH := results/$(PROFILE)/bench/bench.json
$(NB)/04_report.ipynb: notebooks/04_report.ipynb $(wildcard lib/offbyone/report/*.py) paper/published.csv \
                       $(foreach r,$(RUNS),$(NB)/03_measure-$(r).ipynb) \
                       $(COMPANION_MEASURES) | $(BENCH)
	$(call RUN_NB,report,04_report) -p profile $(PROFILE)
$(NB)/04_report.ipynb $(NB)/05_bench.ipynb: $(REGENERATE)

# benchmarks: measured by the CLI (on an otherwise idle machine), plotted by a notebook
# (after every measurement: with JOBS > 1 it would otherwise time attention beside training)
$(BENCH): lib/offbyone/bench.py lib/offbyone/attention.py $(call profile_file,$(PROFILE)) $(NB)/01_prepare_data.ipynb \
          | $(foreach r,$(RUNS),$(NB)/03_measure-$(r).ipynb) $(COMPANION_MEASURES)
	@echo "==> [bench] attention and training benchmarks of profile $(PROFILE)"
	env -u OMP_NUM_THREADS $(PY) -m offbyone.bench --for-profile $(PROFILE)

$(NB)/05_bench.ipynb: notebooks/05_bench.ipynb $(BENCH)
	$(call RUN_NB,bench,05_bench) -p profile $(PROFILE)

$(PDF): $(NB)/04_report.ipynb $(NB)/05_bench.ipynb
endif

$(PDF): paper/main.tex paper/refs.bib $(wildcard paper/generated/*.tex paper/generated/*/*)
	@mkdir -p build/paper/latex
	cd paper && latexmk -pdf -interaction=nonstopmode -halt-on-error -file-line-error \
	  -outdir=../build/paper/latex main.tex > ../build/paper/latex.log 2>&1 || \
	  { tail -40 ../build/paper/latex.log; exit 1; }
	cp build/paper/latex/main.pdf $@.tmp && mv $@.tmp $@
	@$(PY) -m offbyone.report.layout --log build/paper/latex/main.log --warn-only

# JupyterLab on notebooks/, on this machine only (127.0.0.1) and behind a token (printed in its
# URL). As root (a container) Jupyter refuses to start unless told: say so, and allow it.
LAB_PORT ?= 8888
LAB_ARGS ?=
lab: $(STAMP)
	@$(PY) -c "import jupyterlab" 2>/dev/null || { echo "installing JupyterLab (first use)"; $(PY) -m pip install -q -e ".[lab]"; }
	@if [ "$$(id -u)" = 0 ]; then echo "running as root: starting JupyterLab with --allow-root"; fi
	$(VENV)/bin/jupyter lab --ServerApp.ip=127.0.0.1 --ServerApp.port=$(LAB_PORT) \
	  --ServerApp.root_dir=notebooks $$( [ "$$(id -u)" = 0 ] && echo --allow-root ) $(LAB_ARGS)

# only what the build made: runs, build outputs, generated paper parts, rehearsals' results and
# results/<profile>/ folders that git does not track (committed results are data: never removed)
clean:
	rm -rf runs build paper/generated .pytest_cache
	@for d in results/*/; do d=$${d%/}; \
	  case $$d in *-rehearsal|*-quickrehearsal) rm -rf "$$d"; continue;; esac; \
	  if git rev-parse --git-dir >/dev/null 2>&1 && [ -z "$$(git ls-files "$$d" | head -1)" ]; then \
	    echo "rm -rf $$d (not committed)"; rm -rf "$$d"; fi; \
	done
