# MODNet -> VACC release pipeline. `make help` lists every target and variable.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DELETE_ON_ERROR:
.DEFAULT_GOAL := help
MAKEFLAGS += --no-builtin-rules

##@ Variables (override on the command line: make int8 CKPT=... DATA=...)
CKPT ?= checkpoints/modnet_photographic_portrait_matting.ckpt## official checkpoint (state_dict from nn.DataParallel)
DATA ?= datasets/PPM-100## PPM-100-shaped folder: image/*.jpg and matte/*.jpg
CONFIG ?= build_configs/official_modnet_fp16.yaml## config used by `make onnx` / `make simplify`
CONFIG_FP16 ?= build_configs/official_modnet_fp16.yaml## config of `make fp16`
CONFIG_INT8 ?= build_configs/official_modnet_int8.yaml## config of `make int8`
BACKEND ?= vamc## engine backend of fp16/int8/eval: vamc (vendor compiler) or ort (reference, any CPU)
VAMC ?= vamc## vendor compiler executable used by BACKEND=vamc (a name on PATH or a path)
VAMC_COMMAND ?= compile## vamc subcommand: compile (vamc 3.4+) or build (older releases)
REDRAW ?= ## set to 1 to draw the calibration subset anew instead of reusing calib/NAME.txt
CALIB_LIST ?= calib/$(patsubst %_tuned,%,$(basename $(notdir $(CONFIG_INT8)))).txt## committed record of the calibration subset (names + sha256; NAME_tuned uses NAME's)
ART ?= artifacts## root of every output (`make demo` uses artifacts/demo)
PYTHON ?= python3## interpreter that creates .venv

export VAMC VAMC_COMMAND

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
name = $(basename $(notdir $(1)))
# A prerequisite that exists only if the file does, so a missing input reaches the Python CLI, whose error says
# where it looked and what to do, instead of Make's "No rule to make target".
optional = $(wildcard $(1))

# Records a variable's value in a file that changes only when the value does, so switching CKPT or DATA to
# another file rebuilds what depends on it even when that file is older than the outputs.
define remember
	@mkdir -p $(@D); printf '%s\n' '$(1)' | cmp -s - $@ || printf '%s\n' '$(1)' > $@
endef

EXPORT_CODE := pipeline/model.py pipeline/checkpoint.py pipeline/export.py pipeline/config.py
SIMPLIFY_CODE := pipeline/simplify.py pipeline/runtime.py pipeline/config.py

##@ Setup
venv: $(STAMP) ## create .venv from requirements.txt (every target does this on first use)
$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --disable-pip-version-check -q -r requirements.txt
	touch $@

##@ Stages
$(ART)/inputs/ckpt.path: FORCE
	$(call remember,$(abspath $(CKPT)))

# Per-config rules, instantiated for every config in use.
define config_rules
$(ART)/onnx/$(call name,$(1)).onnx: $(1) $(call optional,$(CKPT)) $(ART)/inputs/ckpt.path $(EXPORT_CODE) $(STAMP)
	$(PY) -m pipeline export --config $(1) --ckpt $(CKPT) --out $$@
$(ART)/onnx/$(call name,$(1)).sim.onnx: $(ART)/onnx/$(call name,$(1)).onnx $(1) $(SIMPLIFY_CODE) $(STAMP)
	$(PY) -m pipeline simplify --config $(1) --onnx $$< --out $$@
endef
$(foreach c,$(sort $(CONFIG) $(CONFIG_FP16) $(CONFIG_INT8)),$(eval $(call config_rules,$(c))))

onnx: $(ART)/onnx/$(call name,$(CONFIG)).onnx ## export CKPT to a static-shape ONNX (artifacts/onnx/NAME.onnx)
simplify: $(ART)/onnx/$(call name,$(CONFIG)).sim.onnx ## onnxsim + parity check (artifacts/onnx/NAME.sim.onnx)
sim: simplify ## alias of simplify

$(ART)/inputs/data.path: FORCE
	$(call remember,$(abspath $(DATA)))

FP16 := $(call name,$(CONFIG_FP16))
INT8 := $(call name,$(CONFIG_INT8))
CALIB_DIR := $(ART)/calib/$(INT8)
ENGINE_FP16 := $(ART)/engines/$(FP16)/$(BACKEND)
ENGINE_INT8 := $(ART)/engines/$(INT8)/$(BACKEND)
BUILD_CODE := pipeline/backends/__init__.py $(wildcard pipeline/backends/$(BACKEND)/*.py pipeline/backends/$(BACKEND).py) \
	pipeline/config.py

calib: $(CALIB_DIR)/manifest.json ## draw the calibration subset of DATA (artifacts/calib/NAME/; REDRAW=1 draws anew)
$(CALIB_DIR)/manifest.json: $(CONFIG_INT8) $(call optional,$(CALIB_LIST)) $(ART)/inputs/data.path \
		pipeline/calibrate.py pipeline/preprocess.py pipeline/dataset.py $(STAMP) $(if $(REDRAW),FORCE)
	$(PY) -m pipeline calib --config $(CONFIG_INT8) --data $(DATA) --list $(CALIB_LIST) --out $(CALIB_DIR) \
		$(if $(REDRAW),--redraw)

fp16: $(ENGINE_FP16)/manifest.json ## build the fp16 engine (artifacts/engines/NAME/BACKEND/)
$(ENGINE_FP16)/manifest.json: $(ART)/onnx/$(FP16).sim.onnx $(CONFIG_FP16) $(BUILD_CODE) $(STAMP)
	$(PY) -m pipeline build --config $(CONFIG_FP16) --onnx $< --backend $(BACKEND) --out $(@D)

int8: $(ENGINE_INT8)/manifest.json ## calibrate and build the int8 engine (artifacts/engines/NAME/BACKEND/)
$(ENGINE_INT8)/manifest.json: $(ART)/onnx/$(INT8).sim.onnx $(CONFIG_INT8) $(CALIB_DIR)/manifest.json $(BUILD_CODE) \
		$(STAMP)
	$(PY) -m pipeline build --config $(CONFIG_INT8) --onnx $< --calib $(CALIB_DIR) --backend $(BACKEND) --out $(@D)

layers: $(ART)/onnx/$(INT8).sim.onnx ## list every Conv with its vamc and ONNX index (for skip_conv_layers)
	$(PY) -m pipeline layers --config $(CONFIG_INT8) --onnx $<

##@ Quantization analysis and tuning (docs/tuning.md)
TUNED_CONFIG ?= build_configs/$(INT8)_tuned.yaml## where `make tune` copies tuned.yaml (then: make int8 CONFIG_INT8=...)
ANALYZE_DIR := $(ART)/analyze/$(INT8)
TUNE_DIR := $(ART)/tune/$(INT8)
TUNING_CODE := $(wildcard pipeline/tuning/*.py pipeline/backends/ort/*.py) pipeline/config.py pipeline/metrics.py \
	pipeline/preprocess.py pipeline/calibrate.py
TUNING_INPUTS := $(ART)/onnx/$(INT8).sim.onnx $(CONFIG_INT8) $(CALIB_DIR)/manifest.json $(ART)/inputs/data.path \
	$(TUNING_CODE) $(STAMP)
TUNING_ARGS = --config $(CONFIG_INT8) --onnx $(ART)/onnx/$(INT8).sim.onnx --calib $(CALIB_DIR) --data $(DATA)

analyze: $(ANALYZE_DIR)/layers.csv ## per-Conv int8 error of CONFIG_INT8 on validation images (artifacts/analyze/NAME/)
$(ANALYZE_DIR)/layers.csv: $(TUNING_INPUTS)
	$(PY) -m pipeline analyze $(TUNING_ARGS) --out $(@D)

tune: $(TUNE_DIR)/tuned.yaml ## search quantize settings that meet pipeline.tune (artifacts/tune/NAME/), copy to TUNED_CONFIG
	cp $< $(TUNED_CONFIG).part && mv $(TUNED_CONFIG).part $(TUNED_CONFIG)
	@echo "wrote $(TUNED_CONFIG): build it with make int8 CONFIG_INT8=$(TUNED_CONFIG)"
$(TUNE_DIR)/tuned.yaml: $(TUNING_INPUTS)
	$(PY) -m pipeline tune $(TUNING_ARGS) --out $(@D)

##@ Evaluation
LIMIT ?= ## score only the first N images of DATA, by name (empty: all)
EVAL := $(ART)/eval
EVAL_FP32 := $(EVAL)/fp32
EVAL_FP16 := $(EVAL)/fp16-$(BACKEND)
EVAL_INT8 := $(EVAL)/int8-$(BACKEND)
FP32_ONNX := $(ART)/onnx/$(FP16).sim.onnx
EVAL_CODE := pipeline/evaluate.py pipeline/metrics.py pipeline/runners.py pipeline/preprocess.py pipeline/dataset.py \
	pipeline/config.py
REPORT_CODE := pipeline/report.py pipeline/flops.py pipeline/metrics.py
EVAL_ARGS = --data $(DATA) $(if $(LIMIT),--limit $(LIMIT))
# With another int8 config (a tuned one), the report also shows the vendor's published config (KL, per channel, no
# skip) beside it, once that engine has been built (`make int8` with the default CONFIG_INT8).
VENDOR_INT8 := build_configs/official_modnet_int8.yaml
VENDOR_ENGINE := $(ART)/engines/$(call name,$(VENDOR_INT8))/$(BACKEND)
EVAL_VENDOR := $(EVAL)/int8-vendor-$(BACKEND)
VENDOR_ROW := $(if $(filter-out $(abspath $(VENDOR_INT8)),$(abspath $(CONFIG_INT8))),$(wildcard $(VENDOR_ENGINE)/manifest.json))
ENGINE_ARGS = --fp32 $(EVAL_FP32) --engine fp16 $(EVAL_FP16) $(CONFIG_FP16) \
	$(if $(VENDOR_ROW),--engine "int8 vendor config (KL, per channel, no skip)" $(EVAL_VENDOR) $(VENDOR_INT8)) \
	--engine int8 $(EVAL_INT8) $(CONFIG_INT8)
# The report says so prominently when DATA is the generated demo set.
DEMO_FLAG = $(if $(filter $(abspath $(DEMO_DATA)),$(abspath $(DATA))),--demo)

$(ART)/inputs/limit.txt: FORCE
	$(call remember,$(LIMIT))

EVAL_INPUTS := $(ART)/inputs/data.path $(ART)/inputs/limit.txt $(EVAL_CODE) $(STAMP)
$(EVAL_FP32)/metrics.json: $(FP32_ONNX) $(CONFIG_FP16) $(EVAL_INPUTS)
	$(PY) -m pipeline evaluate --config $(CONFIG_FP16) --engine $(FP32_ONNX) $(EVAL_ARGS) --out $(@D)
$(EVAL_FP16)/metrics.json: $(ENGINE_FP16)/manifest.json $(CONFIG_FP16) $(EVAL_INPUTS)
	$(PY) -m pipeline evaluate --config $(CONFIG_FP16) --engine $(ENGINE_FP16) $(EVAL_ARGS) --out $(@D)
$(EVAL_INT8)/metrics.json: $(ENGINE_INT8)/manifest.json $(CONFIG_INT8) $(EVAL_INPUTS)
	$(PY) -m pipeline evaluate --config $(CONFIG_INT8) --engine $(ENGINE_INT8) $(EVAL_ARGS) --out $(@D)
$(EVAL_VENDOR)/metrics.json: $(VENDOR_ENGINE)/manifest.json $(VENDOR_INT8) $(EVAL_INPUTS)
	$(PY) -m pipeline evaluate --config $(VENDOR_INT8) --engine $(VENDOR_ENGINE) $(EVAL_ARGS) --out $(@D)

# The report is written whatever the gate says (it shows the gate's outcome); the gate is the `eval` recipe
# below, so a failing gate fails `make eval` without deleting the report.
$(ART)/report.md $(ART)/report.png &: $(EVAL_FP32)/metrics.json $(EVAL_FP16)/metrics.json $(EVAL_INT8)/metrics.json \
		$(if $(VENDOR_ROW),$(EVAL_VENDOR)/metrics.json) \
		$(FP32_ONNX) $(CONFIG_FP16) $(CONFIG_INT8) $(REPORT_CODE) $(STAMP)
	$(PY) -m pipeline report $(ENGINE_ARGS) --config $(CONFIG_FP16) --onnx $(FP32_ONNX) --data $(DATA) \
		$(DEMO_FLAG) --out $(ART)/report.md --png $(ART)/report.png

eval: $(ART)/report.md $(ART)/report.png ## evaluate fp32, fp16, int8 of BACKEND on DATA: artifacts/report.md + .png, then the accuracy gate
	$(PY) -m pipeline gate $(ENGINE_ARGS)

##@ Release
RELEASE_ROOT ?= $(ART)/release## where `make release` puts NAME-HASH/ bundles
RELEASE ?= ## the bundle `make verify` rebuilds and compares, e.g. artifacts/release/official_modnet-0123abcd4567

release: fp16 int8 eval ## bundle engines, ONNX, configs, calibration list, report + MANIFEST.json (never overwrites)
	$(PY) -m pipeline release --config-fp16 $(CONFIG_FP16) --config-int8 $(CONFIG_INT8) --ckpt $(CKPT) \
		--data $(DATA) --backend $(BACKEND) --calib-list $(CALIB_LIST) --calib $(CALIB_DIR) \
		--onnx-fp16 $(ART)/onnx/$(FP16).sim.onnx --onnx-int8 $(ART)/onnx/$(INT8).sim.onnx \
		--engine-fp16 $(ENGINE_FP16) --engine-int8 $(ENGINE_INT8) --eval-dir $(EVAL) \
		--report $(ART)/report.md $(ART)/report.png --out-root $(RELEASE_ROOT)

verify: $(STAMP) ## rebuild RELEASE from its manifest in a scratch folder and compare every file
	$(if $(RELEASE),,$(error set RELEASE to a bundle folder: make verify RELEASE=$(ART)/release/NAME-HASH))
	@mkdir -p $(ART)/verify
	$(PY) -m pipeline verify --release $(RELEASE) --scratch-root $(ART)/verify

##@ Demo and tests
DEMO := artifacts/demo
DEMO_CKPT := $(DEMO)/inputs/demo_checkpoint.ckpt
DEMO_DATA := $(DEMO)/inputs/PPM-100
DEMO_COUNT ?= 100## images in the generated PPM-100-shaped folder

demo-ckpt: $(DEMO_CKPT) ## write the seeded checkpoint in the official layout
$(DEMO_CKPT): pipeline/demo_checkpoint.py pipeline/model.py $(STAMP)
	$(PY) -m pipeline demo-ckpt --out $@

demo-data: $(DEMO_DATA)/.complete ## write the synthetic PPM-100-shaped folder
$(DEMO_DATA)/.complete: pipeline/demo_data.py $(STAMP)
	$(PY) -m pipeline demo-data --out $(DEMO_DATA) --count $(DEMO_COUNT)
	touch $@

demo: $(DEMO_CKPT) $(DEMO_DATA)/.complete ## run the whole pipeline on generated data (outputs under artifacts/demo)
	$(MAKE) --no-print-directory ART=$(DEMO) CKPT=$(DEMO_CKPT) DATA=$(DEMO_DATA) BACKEND=ort \
		CALIB_LIST=$(DEMO)/calib_list/$(INT8).txt demo-stages

# The demo's calibration list goes under artifacts/demo: calib/ holds only the record of real PPM-100 draws.
demo-stages: calib fp16 int8 eval release

test: $(STAMP) ## run the test suite
	$(PY) -m pytest -q tests

clean: ## remove artifacts/ outputs (keeps .venv and artifacts/README.md)
	find $(ART) -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +

help: ## list targets and variables
	@awk 'BEGIN {FS = ":.*## "} \
	  /^##@/ {printf "\n%s\n", substr($$0, 5); next} \
	  /^[a-zA-Z0-9_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2; next} \
	  /^[A-Z0-9_]+ \?= .*## / {split($$0, a, "## "); split(a[1], v, " \\?= "); printf "  %-14s %s (default: %s)\n", v[1], a[2], v[2]}' $(MAKEFILE_LIST)

FORCE:
.PHONY: venv onnx simplify sim calib fp16 int8 layers analyze tune eval release verify demo demo-ckpt demo-data demo-stages test clean help FORCE
