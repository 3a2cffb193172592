# MODNet -> VACC release pipeline. `make help` lists every target and variable.
ifeq ($(filter grouped-target,$(.FEATURES)),)
$(error GNU Make 4.3 or later is needed (grouped targets `&:`); this is make $(MAKE_VERSION))
endif
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
PIP_ARGS ?= ## extra pip arguments for creating .venv, e.g. the CPU-only torch index (README, "Installing")

# The checks of the variables below stay in Make rather than in one Python call. A Python check would get the values
# only on a $(shell ...) command line (Make 4.3 passes $(shell) no exported variable): expanded, and through the
# shell, the very thing an unchecked value must not reach; and PYTHON, which it would run on, is one of them. They
# run when the Makefile is read, before any recipe (`make clean`'s `rm` included); each says why it is needed there.
# pipeline/core/names.py holds the same path rule for the values Python hands to a Make (verify's rebuild
# variables, read from a bundle's manifest).

# Path variables are data that reach recipes: refuse, in one line, any character the shell or Make would
# interpret. In Make because it reads the raw text ($(value)), so a `$(shell ...)` in a value is never expanded, and
# PYTHON is one of them: the interpreter a Python check would run on. Single quotes in recipes do the rest.
define newline


endef
unsafe_chars := $$ ` ' " ; & | < > ( ) { } [ ] * ? ~ \ % \#
unsafe = $(strip $(foreach c,$(unsafe_chars),$(if $(findstring $c,$(value $1)),$c)) \
	$(if $(findstring $(newline),$(value $1)),newline) $(if $(word 2,x$(value $1)x),space))
PATH_VARS := CKPT DATA CONFIG CONFIG_FP16 CONFIG_INT8 CALIB_LIST ART RELEASE_ROOT RELEASE VAMC VAMC_COMMAND HWCHECK_SKIP TUNED_CONFIG \
	TUNE_EXTRA PYTHON
$(foreach v,$(PATH_VARS),$(if $(filter command line environment%,$(origin $v)),$(if $(call unsafe,$v),\
	$(error $v holds $(call unsafe,$v), which the shell or Make would interpret: use a plain path))))
# LIMIT and DEMO_COUNT become --limit and --count: in Make so that a typo stops `make eval LIMIT=1O` before the
# export, simplify and builds that run first (argparse would see it only at evaluate, or at demo-data). TEST_JOBS
# becomes pytest's -n, unquoted in the test recipes: a number or nothing.
digits_only = $(if $(strip $(subst 0,,$(subst 1,,$(subst 2,,$(subst 3,,$(subst 4,,$(subst 5,,$(subst 6,,\
	$(subst 7,,$(subst 8,,$(subst 9,,$(value $1)))))))))))),,yes)
$(foreach v,LIMIT DEMO_COUNT TEST_JOBS,$(if $(and $(value $v),$(if $(call digits_only,$v),,x)),\
	$(error $v=$(value $v) is not a whole number)))
# REDRAW, FORCE and OVERWRITE are Make's own switches ($(if $(REDRAW),--redraw)): no Python sees their values.
$(foreach v,REDRAW FORCE OVERWRITE,$(if $(filter-out 1,$(value $v)),$(error $v=$(value $v): set $v=1 or leave it empty)))

# A relative VAMC (tools/vamc) names a file here: resolve it once, so vamc run from its work folder finds it.
override VAMC := $(if $(findstring /,$(VAMC)),$(abspath $(VAMC)),$(VAMC))
export VAMC VAMC_COMMAND

# The variables are checked before any rule runs, so a typo is one line naming the value and the valid ones,
# not Make's "No rule to make target". Goals that use none of them (help, clean, test...) skip the checks.
BACKENDS := vamc ort
CONFIG_FILES := $(notdir $(wildcard build_configs/*.yaml))
# BACKEND names files and folders of every goal, so it is checked whatever the goal, on its raw text, and before
# CODE_DEPS hands it to pipeline/core/deps.py in a shell command.
ifneq ($(words $(value BACKEND)) $(filter $(BACKENDS),$(value BACKEND)),1 $(value BACKEND))
$(error BACKEND=$(value BACKEND) is not a backend: use one of $(BACKENDS))
endif
# The configs name the per-config rules, instantiated when the Makefile is read: a missing one must be refused
# before, or Make says "No rule to make target".
ifneq ($(filter-out help venv test test-fast clean clean-all,$(or $(MAKECMDGOALS),help)),)
no_config = $(1)=$(value $(1)): no such config file (the configs in build_configs/: $(CONFIG_FILES))
$(foreach v,CONFIG CONFIG_FP16 CONFIG_INT8,$(if $(wildcard $(value $(v))),,$(error $(call no_config,$(v)))))
endif
# ART is written by every stage and emptied by `make clean`: a folder of its own, never the checkout or above it.
# In Make because `make clean` removes it in a recipe of its own, with no Python stage before it to refuse it.
ART_ABS := $(abspath $(ART))
ifeq ($(strip $(ART)),)
$(error ART is empty: set it to the folder for the outputs, e.g. ART=artifacts)
endif
ifneq ($(words $(ART)),1)
$(error ART='$(ART)' must be one folder, without spaces)
endif
ifneq ($(filter $(patsubst %/,%,$(ART_ABS))/%,$(CURDIR)/),)
$(error ART=$(ART) is the checkout or a folder holding it: use a subfolder (ART=artifacts) or a folder elsewhere)
endif
ifeq ($(filter /%,$(ART))$(filter $(CURDIR)/%,$(ART_ABS)),)
$(error ART=$(ART) is outside the project: use a subfolder (ART=artifacts) or an absolute path)
endif

VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
name = $(basename $(notdir $(1)))
# A prerequisite that exists only if the file does, so a missing input reaches the Python CLI, whose error says
# where it looked and what to do, instead of Make's "No rule to make target".
optional = $(wildcard $(1))

# Where each output lands under ART, from pipeline/core/layout.py (plain python3, like deps.py below): each of its
# path functions becomes the Make function layout.NAME, e.g. $(call layout.sim_onnx,$(ART),NAME) is
# ART/onnx/NAME.sim.onnx. Without it no rule would name the right files: its failure stops Make, on one line.
LAYOUT := $(shell out=$$($(PYTHON) -I pipeline/core/layout.py 2>&1) || { printf '%s\n' "$$out" | tail -n 1; exit 1; }; \
	printf '%s\n' "$$out")
ifneq ($(.SHELLSTATUS),0)
$(error pipeline/core/layout.py failed under $(PYTHON), so the outputs' paths are unknown: $(LAYOUT))
endif
$(foreach w,$(LAYOUT),$(eval layout.$(firstword $(subst =, ,$w)) = $(patsubst $(firstword $(subst =, ,$w))=%,%,$w)))

# Records a variable's value in a file that changes only when the value does, so switching CKPT or DATA to
# another file rebuilds what depends on it even when that file is older than the outputs.
define remember
	@mkdir -p -- '$(@D)'; printf '%s\n' '$(1)' | cmp -s - '$@' || printf '%s\n' '$(1)' > '$@'
endef
# The same for what a command prints (run on every make, in a subshell so a `cd` stays inside; the file changes
# only when the output does).
define remember_output
	@mkdir -p -- '$(@D)'; ( $(1) ) > '$@.new'; if cmp -s '$@.new' '$@'; then rm -- '$@.new'; else mv -- '$@.new' '$@'; fi
endef

# The code each stage runs, derived from its imports by pipeline/core/deps.py (plain python3: no .venv needed yet).
# Its errors are kept (2>&1) for the one line below: an empty CODE_DEPS would silently rebuild nothing on code edits.
comma := ,
CODE_DEPS := $(shell $(PYTHON) -I pipeline/core/deps.py export simplify calib build:$(BACKEND) correct evaluate report \
	demo-data demo-ckpt tune 2>&1)
ifneq ($(.SHELLSTATUS),0)
$(error `$(PYTHON) -I pipeline/core/deps.py` failed (exit $(.SHELLSTATUS)), so no stage would know its code: \
	$(CODE_DEPS))
endif
code = $(subst $(comma), ,$(patsubst $(1)=%,%,$(filter $(1)=%,$(CODE_DEPS))))
EXPORT_CODE := $(call code,export)
SIMPLIFY_CODE := $(call code,simplify)

##@ Setup
venv: $(STAMP) ## create .venv from requirements.txt (every target does this on first use)
$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	@echo "installing requirements.txt into $(VENV) (a few minutes the first time; pip shows each package)"
	$(VENV)/bin/pip install --disable-pip-version-check $(PIP_ARGS) -r requirements.txt
	touch $@

##@ Stages
$(call layout.input_record,$(ART),ckpt.path): FORCE
	$(call remember,$(abspath $(CKPT)))

# Per-config rules, instantiated for every config in use.
define config_rules
$(call layout.onnx,$(ART),$(call name,$(1))): $(1) $(call optional,$(CKPT)) $(call layout.input_record,$(ART),ckpt.path) \
		$(EXPORT_CODE) $(STAMP)
	$(PY) -m pipeline export --config '$(1)' --ckpt '$(CKPT)' --out '$$@'
$(call layout.sim_onnx,$(ART),$(call name,$(1))): $(call layout.onnx,$(ART),$(call name,$(1))) $(1) $(SIMPLIFY_CODE) $(STAMP)
	$(PY) -m pipeline simplify --config '$(1)' --onnx '$$<' --out '$$@'
endef
$(foreach c,$(sort $(CONFIG) $(CONFIG_FP16) $(CONFIG_INT8)),$(eval $(call config_rules,$(c))))

onnx: $(call layout.onnx,$(ART),$(call name,$(CONFIG))) ## export CKPT to a static-shape ONNX (artifacts/onnx/NAME.onnx)
simplify: $(call layout.sim_onnx,$(ART),$(call name,$(CONFIG))) ## onnxsim + parity check (artifacts/onnx/NAME.sim.onnx)
sim: simplify ## alias of simplify

$(call layout.input_record,$(ART),data.path): FORCE
	$(call remember,$(abspath $(DATA)))

FP16 := $(call name,$(CONFIG_FP16))
INT8 := $(call name,$(CONFIG_INT8))
CALIB_DIR := $(call layout.calib,$(ART),$(INT8))
CALIB_MANIFEST := $(call layout.manifest,$(CALIB_DIR))
ENGINE_FP16 := $(call layout.engine,$(ART),$(FP16),$(BACKEND))
ENGINE_INT8 := $(call layout.engine,$(ART),$(INT8),$(BACKEND))
BUILD_CODE := $(call code,build:$(BACKEND))
# vamc engines depend on the compiler too: which file VAMC is, its --version line and sha256, and VAMC_COMMAND.
COMPILER := $(if $(filter vamc,$(BACKEND)),$(call layout.input_record,$(ART),vamc.txt))

$(call layout.input_record,$(ART),vamc.txt): FORCE
	$(call remember_output,exe=$$(command -v '$(VAMC)' || true); printf '%s\n' "$$exe" '$(VAMC_COMMAND)'; \
		if [ -n "$$exe" ]; then timeout 20 "$$exe" --version 2>&1 | head -n 1 || true; sha256sum "$$exe"; fi)

# A missing list is rewritten by the stage that writes it (a new draw: same seed and data, same subset).
calib: $(CALIB_MANIFEST) ## draw the calibration subset of DATA (artifacts/calib/NAME/; REDRAW=1 draws anew)
$(CALIB_MANIFEST): $(CONFIG_INT8) $(if $(wildcard $(CALIB_LIST)),$(CALIB_LIST),FORCE) $(call layout.input_record,$(ART),data.path) \
		$(call code,calib) $(STAMP) $(if $(REDRAW),FORCE)
	$(PY) -m pipeline calib --config '$(CONFIG_INT8)' --data '$(DATA)' --list '$(CALIB_LIST)' --out '$(CALIB_DIR)' \
		$(if $(REDRAW),--redraw)

fp16: $(call layout.manifest,$(ENGINE_FP16)) ## build the fp16 engine (artifacts/engines/NAME/BACKEND/)
$(call layout.manifest,$(ENGINE_FP16)): $(call layout.sim_onnx,$(ART),$(FP16)) $(CONFIG_FP16) $(BUILD_CODE) $(COMPILER) $(STAMP)
	$(PY) -m pipeline build --config '$(CONFIG_FP16)' --onnx '$<' --backend '$(BACKEND)' --out '$(@D)'

# pipeline.bias_correction of CONFIG_INT8, read as text (.venv may not exist yet when Make starts): with
# `empirical`, int8 builds from the corrected ONNX. The build checks that the ONNX it is given is what the config
# says as Python reads it, so a way of writing the key that this misses is one error line, never a wrong engine.
CORRECTED := $(shell sed -n -E "s/^[[:space:]]+bias_correction:[[:space:]]*[\"']?empirical[\"']?[[:space:]]*(\#.*)?$$/yes/p" \
	'$(CONFIG_INT8)' 2>/dev/null)
INT8_SIM := $(call layout.sim_onnx,$(ART),$(INT8))
INT8_CORRECTED := $(call layout.corrected_onnx,$(ART),$(INT8))
INT8_ONNX := $(if $(CORRECTED),$(INT8_CORRECTED),$(INT8_SIM))
CORRECT_CODE := $(call code,correct)

$(INT8_CORRECTED): $(INT8_SIM) $(CONFIG_INT8) $(CALIB_MANIFEST) \
		$(CORRECT_CODE) $(STAMP)
	$(PY) -m pipeline correct --config '$(CONFIG_INT8)' --onnx '$<' --calib '$(CALIB_DIR)' --out '$@'

correct: $(INT8_CORRECTED) ## bias-correct the simplified ONNX for CONFIG_INT8 (pipeline.bias_correction: empirical)

int8: $(call layout.manifest,$(ENGINE_INT8)) ## calibrate and build the int8 engine (artifacts/engines/NAME/BACKEND/)
$(call layout.manifest,$(ENGINE_INT8)): $(INT8_ONNX) $(CONFIG_INT8) $(CALIB_MANIFEST) $(BUILD_CODE) \
		$(COMPILER) $(STAMP)
	$(PY) -m pipeline build --config '$(CONFIG_INT8)' --onnx '$<' --calib '$(CALIB_DIR)' --backend '$(BACKEND)' \
		--out '$(@D)'

layers: $(INT8_SIM) ## list every Conv with its vamc and ONNX index (for skip_conv_layers)
	$(PY) -m pipeline layers --config '$(CONFIG_INT8)' --onnx '$<'

##@ Quantization analysis and tuning (docs/tuning.md)
TUNED_CONFIG ?= build_configs/$(INT8)_tuned.yaml## where `make tune` copies tuned.yaml: a new *.yaml in build_configs/ or an earlier tuned one (then: make int8 CONFIG_INT8=...)
FORCE ?= ## set to 1 to let `make tune` promote whatever the verdict (the copy's header says so)
OVERWRITE ?= ## set to 1 to let `make tune` replace a TUNED_CONFIG edited by hand since tune wrote it
TUNE_EXTRA ?= ## folder of unlabelled photos (no mattes) whose deviation from fp32 joins tune's selection figures
ANALYZE_LAYERS := $(call layout.analyze_layers,$(ART),$(INT8))
TUNED_YAML := $(call layout.tuned_yaml,$(ART),$(INT8))
TUNING_CODE = $(call code,tune)# tune imports analyze: this covers both stages
TUNING_INPUTS := $(INT8_SIM) $(CONFIG_INT8) $(CALIB_MANIFEST) $(call layout.input_record,$(ART),data.path) \
	$(TUNING_CODE) $(STAMP)
TUNING_ARGS = --config '$(CONFIG_INT8)' --onnx '$(INT8_SIM)' --calib '$(CALIB_DIR)' --data '$(DATA)' \
	--ckpt '$(CKPT)' $(DEMO_FLAG)
# Where TUNED_CONFIG may go is checked by the Python stage (pipeline/tuning/promote.py) before tuning starts.
PROMOTE_ARGS = --config '$(CONFIG_INT8)' --to '$(TUNED_CONFIG)' $(DEMO_FLAG) $(if $(FORCE),--force) $(if $(OVERWRITE),--overwrite)

analyze: $(ANALYZE_LAYERS) ## per-Conv int8 error of CONFIG_INT8 on the selection images (artifacts/analyze/NAME/)
$(ANALYZE_LAYERS): $(TUNING_INPUTS)
	$(PY) -m pipeline analyze $(TUNING_ARGS) --out '$(@D)'

# The extra images are an input of the tune: their folder, and what it holds (names, sizes, times).
$(call layout.input_record,$(ART),tune_extra.path): FORCE
	$(call remember,$(if $(TUNE_EXTRA),$(abspath $(TUNE_EXTRA))))
$(call layout.input_record,$(ART),tune_extra.contents): FORCE
	$(call remember_output,$(if $(TUNE_EXTRA),cd '$(TUNE_EXTRA)' 2>/dev/null && find -L . -maxdepth 1 -type f \
		-printf '%p\t%s\t%T@\n' 2>/dev/null | LC_ALL=C sort || true,true))

tune: $(STAMP) ## search quantize settings closer to fp32 (artifacts/tune/NAME/); copy to TUNED_CONFIG if confirmed
	$(PY) -m pipeline promote --check $(PROMOTE_ARGS)
	$(MAKE) --no-print-directory '$(TUNED_YAML)'
	$(PY) -m pipeline promote $(PROMOTE_ARGS) --tuned '$(TUNED_YAML)'
$(TUNED_YAML): $(TUNING_INPUTS) $(call layout.input_record,$(ART),tune_extra.path) \
		$(call layout.input_record,$(ART),tune_extra.contents)
	$(PY) -m pipeline tune $(TUNING_ARGS)$(if $(TUNE_EXTRA), --extra-images '$(TUNE_EXTRA)') --out '$(@D)'

##@ Evaluation
LIMIT ?= ## score only the first N images of DATA, by name (empty: all)
EVAL := $(call layout.eval_dir,$(ART))
EVAL_FP32 := $(call layout.eval_fp32,$(ART))
EVAL_FP16 := $(call layout.eval_engine,$(ART),fp16,$(BACKEND))
EVAL_INT8 := $(call layout.eval_engine,$(ART),int8,$(BACKEND))
FP16_SIM := $(call layout.sim_onnx,$(ART),$(FP16))
FP32_ONNX := $(FP16_SIM)
EVAL_CODE := $(call code,evaluate)
REPORT_CODE := $(call code,report)
EVAL_ARGS = --data '$(DATA)' $(if $(LIMIT),--limit '$(LIMIT)')
# With another int8 config (a tuned one), the report also shows the vendor's published config (KL, per channel, no
# skip) beside it, once that engine has been built (`make int8` with the default CONFIG_INT8).
VENDOR_INT8 := build_configs/official_modnet_int8.yaml
VENDOR_ENGINE := $(call layout.engine,$(ART),$(call name,$(VENDOR_INT8)),$(BACKEND))
EVAL_VENDOR := $(call layout.eval_engine,$(ART),int8-vendor,$(BACKEND))
VENDOR_ROW := $(if $(filter-out $(abspath $(VENDOR_INT8)),$(abspath $(CONFIG_INT8))),$(wildcard $(call layout.manifest,$(VENDOR_ENGINE))))
ENGINE_ARGS = --fp32 '$(EVAL_FP32)' --engine fp16 '$(EVAL_FP16)' '$(CONFIG_FP16)' \
	$(if $(VENDOR_ROW),--engine "int8 vendor config (KL, per channel, no skip)" '$(EVAL_VENDOR)' '$(VENDOR_INT8)') \
	--engine int8 '$(EVAL_INT8)' '$(CONFIG_INT8)'
# The report says so prominently when DATA is the generated demo set.
DEMO_FLAG = $(if $(filter $(abspath $(DEMO_DATA)),$(abspath $(DATA))),--demo)

$(call layout.input_record,$(ART),limit.txt): FORCE
	$(call remember,$(LIMIT))

# What DATA holds (name, size and modification time of every image and matte): changes only when the files do.
$(call layout.input_record,$(ART),data.contents): FORCE
	$(call remember_output,cd '$(DATA)' 2>/dev/null && find -L image matte -type f -printf '%p\t%s\t%T@\n' \
		2>/dev/null | LC_ALL=C sort || true)

EVAL_INPUTS := $(foreach f,data.path data.contents limit.txt,$(call layout.input_record,$(ART),$f)) $(EVAL_CODE) $(STAMP)
$(call layout.metrics,$(EVAL_FP32)): $(FP32_ONNX) $(CONFIG_FP16) $(EVAL_INPUTS)
	$(PY) -m pipeline evaluate --config '$(CONFIG_FP16)' --engine '$(FP32_ONNX)' $(EVAL_ARGS) --out '$(@D)'
$(call layout.metrics,$(EVAL_FP16)): $(call layout.manifest,$(ENGINE_FP16)) $(CONFIG_FP16) $(EVAL_INPUTS)
	$(PY) -m pipeline evaluate --config '$(CONFIG_FP16)' --engine '$(ENGINE_FP16)' $(EVAL_ARGS) --out '$(@D)'
$(call layout.metrics,$(EVAL_INT8)): $(call layout.manifest,$(ENGINE_INT8)) $(CONFIG_INT8) $(EVAL_INPUTS)
	$(PY) -m pipeline evaluate --config '$(CONFIG_INT8)' --engine '$(ENGINE_INT8)' $(EVAL_ARGS) --out '$(@D)'
$(call layout.metrics,$(EVAL_VENDOR)): $(call layout.manifest,$(VENDOR_ENGINE)) $(VENDOR_INT8) $(EVAL_INPUTS)
	$(PY) -m pipeline evaluate --config '$(VENDOR_INT8)' --engine '$(VENDOR_ENGINE)' $(EVAL_ARGS) --out '$(@D)'

# The report adds every row on the images no engine was calibrated or tuned on: outside each int8 engine's
# calibration subset (the vendor row's too, while its folder is there: for NAME_tuned it is the same subset, drawn
# from NAME's list) and, for a tuned config NAME_tuned, outside the selection images `make tune` scored NAME's
# candidates on (without that list the report says it excludes only the calibration images).
VENDOR_CALIB_DIR := $(call layout.calib,$(ART),$(call name,$(VENDOR_INT8)))
VENDOR_CALIB := $(if $(VENDOR_ROW),$(wildcard $(call layout.manifest,$(VENDOR_CALIB_DIR))))
SELECTION := $(if $(filter %_tuned,$(INT8)),$(wildcard $(call layout.selection,$(ART),$(patsubst %_tuned,%,$(INT8)))))
SCOPE_ARGS = --calib '$(CALIB_DIR)' $(if $(VENDOR_CALIB),--calib '$(VENDOR_CALIB_DIR)') \
	$(if $(SELECTION),--exclude-selection '$(SELECTION)')

# The report is written whatever the gate says (it shows the gate's outcome); the gate is the `eval` recipe
# below, so a failing gate fails `make eval` without deleting the report.
REPORT_MD := $(call layout.report_md,$(ART))
REPORT_PNG := $(call layout.report_png,$(ART))
$(REPORT_MD) $(REPORT_PNG) &: $(foreach e,$(EVAL_FP32) $(EVAL_FP16) $(EVAL_INT8),$(call layout.metrics,$e)) \
		$(if $(VENDOR_ROW),$(call layout.metrics,$(EVAL_VENDOR))) $(CALIB_MANIFEST) $(VENDOR_CALIB) $(SELECTION) \
		$(FP32_ONNX) $(CONFIG_FP16) $(CONFIG_INT8) $(REPORT_CODE) $(STAMP)
	$(PY) -m pipeline report $(ENGINE_ARGS) $(SCOPE_ARGS) --config '$(CONFIG_FP16)' --onnx '$(FP32_ONNX)' \
		--data '$(DATA)' --ckpt '$(CKPT)' $(DEMO_FLAG) --out '$(REPORT_MD)' --png '$(REPORT_PNG)'

eval: $(REPORT_MD) $(REPORT_PNG) ## evaluate fp32, fp16, int8 of BACKEND on DATA: artifacts/report.md + .png, then the accuracy gate
	$(PY) -m pipeline gate $(ENGINE_ARGS)

##@ First run on a card
HWCHECK_SKIP ?= ## skip_conv_layers list of hwcheck's numbering check, e.g. 54 (empty: hwcheck chooses)

hwcheck: $(STAMP) ## with a VACC card: channel order, resize path, conv numbering, int8 prediction (artifacts/hwcheck/report.md)
	$(MAKE) --no-print-directory BACKEND=vamc fp16 int8
	$(PY) -m pipeline hwcheck --config-fp16 '$(CONFIG_FP16)' --config-int8 '$(CONFIG_INT8)' \
		--onnx-fp16 '$(FP16_SIM)' --onnx-int8 '$(INT8_ONNX)' \
		--engine-fp16 '$(call layout.engine,$(ART),$(FP16),vamc)' --engine-int8 '$(call layout.engine,$(ART),$(INT8),vamc)' \
		--calib '$(CALIB_DIR)' --data '$(DATA)' --out '$(call layout.hwcheck,$(ART))' $(if $(HWCHECK_SKIP),--skip-conv-layers '$(HWCHECK_SKIP)')

##@ Release
RELEASE_ROOT ?= $(call layout.release_root,$(ART))## where `make release` puts NAME-HASH/ bundles
RELEASE ?= ## the bundle `make verify` rebuilds and compares, e.g. artifacts/release/official_modnet-0123abcd4567

release: fp16 int8 eval $(CALIB_MANIFEST) ## bundle engines, ONNX, configs, calibration list, report + MANIFEST.json (never overwrites)
	@echo "$(PY) -m pipeline release (bundling $(ART) into $(RELEASE_ROOT); \`make -n release\` shows the full command)"
	@$(PY) -m pipeline release --config-fp16 '$(CONFIG_FP16)' --config-int8 '$(CONFIG_INT8)' --ckpt '$(CKPT)' \
		--data '$(DATA)' --backend '$(BACKEND)' --calib-list '$(CALIB_LIST)' --calib '$(CALIB_DIR)' \
		--onnx-fp16 '$(FP16_SIM)' --onnx-int8 '$(INT8_ONNX)' \
		--engine-fp16 '$(ENGINE_FP16)' --engine-int8 '$(ENGINE_INT8)' --eval-dir '$(EVAL)' $(if $(LIMIT),--limit '$(LIMIT)') \
		--report '$(REPORT_MD)' '$(REPORT_PNG)' $(if $(SELECTION),--selection '$(SELECTION)') \
		--out-root '$(RELEASE_ROOT)'

verify: $(STAMP) ## rebuild RELEASE with its own code (source/) in a scratch folder and compare every file
	$(if $(RELEASE),,$(error set RELEASE to a bundle folder: make verify RELEASE=$(call layout.release_root,$(ART))/NAME-HASH))
	@mkdir -p -- '$(call layout.verify,$(ART))'
	$(PY) -m pipeline verify --release '$(RELEASE)' --scratch-root '$(call layout.verify,$(ART))' \
		--venv-cache '$(call layout.venv_cache,$(ART))'

##@ Demo and tests
DEMO := $(layout.demo)
DEMO_CKPT := $(call layout.demo_ckpt,$(DEMO))
DEMO_DATA := $(call layout.demo_data,$(DEMO))
DEMO_COUNT ?= 100## images in the generated PPM-100-shaped folder

# Every module the training imports: a change to the generator, the preprocessing or the model retrains it.
DEMO_CKPT_CODE := $(call code,demo-ckpt)
demo-ckpt: $(DEMO_CKPT) ## train MODNet briefly on generated portraits (seeded, CPU) and write it in the official layout
$(DEMO_CKPT): $(DEMO_CKPT_CODE) $(CONFIG_FP16) $(STAMP)
	$(PY) -m pipeline demo-ckpt --config '$(CONFIG_FP16)' --out '$@'

$(call layout.input_record,$(DEMO),demo_count.txt): FORCE
	$(call remember,$(DEMO_COUNT))

# DEMO_COUNT is an input of the generated folder: a new count writes it anew.
demo-data: $(DEMO_DATA)/.complete ## write the synthetic PPM-100-shaped folder
$(DEMO_DATA)/.complete: $(call code,demo-data) $(call layout.input_record,$(DEMO),demo_count.txt) $(STAMP)
	$(PY) -m pipeline demo-data --out '$(DEMO_DATA)' --count '$(DEMO_COUNT)'
	touch -- '$@'

# Ends with where to look: the bundle is the one the release stage names in its root's .latest (written now, or
# already there). The root is passed down, so the two makes agree on it whatever RELEASE_ROOT says.
DEMO_RELEASES := $(strip $(if $(filter command line environment%,$(origin RELEASE_ROOT)),$(RELEASE_ROOT),\
	$(call layout.release_root,$(DEMO))))
DEMO_LIST := $(call layout.calib_list,$(DEMO),$(INT8).txt)
demo: $(DEMO_CKPT) $(DEMO_DATA)/.complete ## run the whole pipeline on generated data (outputs under artifacts/demo)
	@echo "demo: calib fp16 int8 eval release with ART=$(DEMO) BACKEND=ort on the generated checkpoint and data"
	@$(MAKE) --no-print-directory ART='$(DEMO)' CKPT='$(DEMO_CKPT)' DATA='$(DEMO_DATA)' BACKEND=ort \
		CALIB_LIST='$(DEMO_LIST)' RELEASE_ROOT='$(DEMO_RELEASES)' demo-stages
	@bundle='$(DEMO_RELEASES)'/$$(cat -- '$(call layout.latest_release,$(DEMO_RELEASES))'); \
	printf '%s\n' "report:  $(call layout.report_md,$(DEMO)) and $(call layout.report_png,$(DEMO))" \
		"release: $$bundle" "verify:  make verify RELEASE=$$bundle"

# The demo's calibration list goes under artifacts/demo: calib/ holds only the record of real PPM-100 draws.
demo-stages: calib fp16 int8 eval release

# The demo's tuned config stays among the demo's outputs: build_configs/ holds configs for the real model.
DEMO_TUNED := $(call layout.demo_tuned,$(DEMO),$(INT8))
DEMO_VARS = ART='$(DEMO)' CKPT='$(DEMO_CKPT)' DATA='$(DEMO_DATA)' BACKEND=ort CALIB_LIST='$(DEMO_LIST)'
demo-tune: $(DEMO_CKPT) $(DEMO_DATA)/.complete ## tune the demo's int8 config on the generated data (artifacts/demo/tune/)
	$(MAKE) --no-print-directory $(DEMO_VARS) TUNED_CONFIG='$(DEMO_TUNED)' tune
	@printf '%s\n' "build and report it: make $(DEMO_VARS) CONFIG_INT8=$(DEMO_TUNED) int8 eval"

TEST_JOBS ?= 2## processes make test and test-fast run the tests in (pytest-xdist); 0 or empty: one process
# One test file per process at a time (loadfile): a module's fixtures, such as test_verify.py's real release, are
# built once, not once per process; in collection order, which tests/conftest.py starts with the longest files.
PYTEST := $(PY) -m pytest -q $(if $(filter-out 0,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder)
test: $(STAMP) ## run the whole test suite (what CI runs)
	$(PYTEST) tests
test-fast: $(STAMP) ## run the unit tier only: no whole pipeline, no stage on the whole model (the inner loop)
	$(PYTEST) -m 'not slow' tests

# Only what the stages write is removed, in ART and (when ART is the default) in the demo's tree under it; release
# bundles are what "never overwritten" promises to keep, so only clean-all removes them (and hwcheck/: only a
# machine with a card writes it again).
OUTPUTS := $(subst $(comma), ,$(layout.outputs))
CLEAN_ROOTS = $(ART) $(if $(filter $(abspath $(DEMO)/..),$(ART_ABS)),$(DEMO))
RELEASES = $(wildcard $(foreach r,$(CLEAN_ROOTS),$(call layout.release_root,$r)))

clean: ## remove the outputs under ART, keeping the release bundles (ART/release) and .venv
	@echo "removing the outputs in $(CLEAN_ROOTS) ($(OUTPUTS)); keeping $(or $(RELEASES),the release bundles)"
	@rm -rf -- $(foreach r,$(CLEAN_ROOTS),$(addprefix $(r)/,$(OUTPUTS)) $(wildcard $(r)/.*.part))

# hwcheck's report is evidence from a card, kept by clean.
HWCHECKS = $(wildcard $(foreach r,$(CLEAN_ROOTS),$(call layout.hwcheck,$r)))
clean-all: clean ## also remove the release bundles and hwcheck's report: everything the pipeline wrote under ART (keeps .venv)
	@$(if $(HWCHECKS),printf 'removing %s\n' $(HWCHECKS) && rm -rf -- $(HWCHECKS))
	@$(if $(RELEASES),printf 'removing release bundle %s\n' $(wildcard $(addsuffix /*,$(RELEASES))),echo "no release bundles to remove")
	@$(if $(RELEASES),chmod -R u+w -- $(RELEASES) && rm -rf -- $(RELEASES))
	@$(if $(filter $(abspath $(DEMO)/..),$(ART_ABS)),rm -rf -- $(DEMO))

# A documented default that is a Make expression (CALIB_LIST, TUNED_CONFIG...) is shown as Make expands it, not as
# its text: NAME=value pairs for the awk below (the values are paths, checked above for spaces and quotes).
HELP_EXPANDED = $(foreach v,$(shell sed -n 's/^\([A-Z0-9_]*\) ?= [^\#]*[$$].*## .*/\1/p' $(MAKEFILE_LIST)),$v=$($v))

help: ## list targets and variables
	@echo "Start here: make demo, make test"
	@echo "  (demo: the whole pipeline on a generated checkpoint and photos, a few minutes; test: the test suite)"
	@awk -v expanded='$(HELP_EXPANDED)' 'BEGIN {FS = ":.*## "; n = split(expanded, pairs, " "); \
	    for (i = 1; i <= n; i++) {eq = index(pairs[i], "="); value[substr(pairs[i], 1, eq - 1)] = substr(pairs[i], eq + 1)}} \
	  /^##@ Variables/ {vars = "\n" substr($$0, 5) "\n" vars; next} \
	  /^##@/ {printf "\n%s\n", substr($$0, 5); next} \
	  /^[a-zA-Z0-9_-]+:.*## / {printf "  %-14s %s\n", $$1, $$2; next} \
	  /^[A-Z0-9_]+ \?= .*## / {split($$0, a, "## "); split(a[1], v, " \\?= "); if (v[1] in value) v[2] = value[v[1]]; \
	    vars = vars sprintf("  %-14s %s (default: %s)\n", v[1], a[2], v[2])} \
	  END {printf "%s", vars}' $(MAKEFILE_LIST)

FORCE:
.PHONY: venv onnx simplify sim calib correct fp16 int8 layers analyze tune eval hwcheck release verify demo demo-ckpt \
	demo-data demo-stages demo-tune test test-fast clean clean-all help FORCE
