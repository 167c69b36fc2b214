# Single-image self-supervised pre-training: install, render shard sets, test, benchmark, reproduce.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
PILLOW_SIMD := 12.1.1.post0
PILLOW_FALLBACK := 12.1.1

# make shards N=1 IMG=A [D=1281167] [S=256] [SEED=0] [WORKERS=2] [OUT=shards/A] [ARGS="--no-jitter ..."]
# (OUT defaults to shards/<image name>, the folder the README's commands read; pass OUT= for other N, S or D.)
N ?= 1
IMG ?= A
D ?= 1281167
S ?= 256
SEED ?= 0
WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
OUT ?= shards/$(notdir $(basename $(IMG)))
ARGS ?=
# The paper's images (A, B, C): one name, SOURCE_IMAGE_DIR, for every command (render, repro, bench); the
# shared copy when present. Relative, so pages record it as given. (IMAGES= is its older name.)
ifdef IMAGES
SOURCE_IMAGE_DIR := $(IMAGES)
endif
SOURCE_IMAGE_DIR ?= $(if $(wildcard ../shared/data/images),../shared/data/images)
export SOURCE_IMAGE_DIR

.PHONY: install pillow-simd test test-slow test-data bench gpu-check shards repro-cpu repro-ablation-cpu repro-gpu repro-finetune-cpu repro-distill-cpu clean

install:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q -r requirements.txt
	@$(MAKE) --no-print-directory pillow-simd
	$(PIP) install -q --no-deps -e .
	@$(PY) -c "import torch, torchvision, PIL, webdataset, faiss, cv2, h5py; print('installed: torch', torch.__version__, '| torchvision', torchvision.__version__, '| PIL', PIL.__version__)"

# pillow-simd replaces Pillow (same `PIL` package); built from source with AVX2 where the CPU has it.
pillow-simd:
	@if $(PY) -c "import PIL, sys; sys.exit(0 if PIL.__version__ == '$(PILLOW_SIMD)' else 1)" 2>/dev/null; then \
	  echo "pillow-simd $(PILLOW_SIMD) already installed"; exit 0; fi; \
	if [ ! -f /usr/include/jpeglib.h ] && command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  apt-get install -y -q libjpeg62-turbo-dev zlib1g-dev >/dev/null 2>&1 || true; fi; \
	if grep -q avx2 /proc/cpuinfo 2>/dev/null; then cc="cc -mavx2"; else cc="cc"; fi; \
	$(PIP) uninstall -y -q pillow pillow-simd >/dev/null 2>&1; \
	if CC="$$cc" $(PIP) install -q --no-cache-dir pillow-simd==$(PILLOW_SIMD) >/tmp/pillow-simd-build.log 2>&1; then \
	  echo "pillow-simd $(PILLOW_SIMD) built with CC='$$cc'"; \
	else echo "pillow-simd failed to build (log: /tmp/pillow-simd-build.log); falling back to Pillow $(PILLOW_FALLBACK)"; \
	  $(PIP) install -q pillow==$(PILLOW_FALLBACK); fi

test:
	$(PY) -m pytest -q

test-slow:
	$(PY) -m pytest -q -m slow

# make bench [ONLY="render loop"]: every section, or only these (spliced into the existing page)
bench:
	$(PY) -m tests.bench.run --out docs/benchmarks.md $(foreach s,$(ONLY),--only $(s))

# Every GPU path measured in at most 8 minutes on one GPU (docs/benchmarks-gpu.md); without a GPU, a CPU check.
gpu-check:
	PYTHONUNBUFFERED=1 $(PY) -m tests.bench.gpu_check --out docs/benchmarks-gpu.md

shards:
	$(PY) -m augment render --image $(IMG) --n $(N) --count $(D) --size $(S) --seed $(SEED) \
	  --workers $(WORKERS) --out $(OUT) $(ARGS)

# The paper's tables at reduced scale (python -m repro; docs/results/): each a resumable plan of steps with
# step budgets and two seeds per row, at most an hour each on an idle 2-core CPU.
# make repro-cpu [SOURCE_IMAGE_DIR=dir-with-animals.png] [CIFAR=cifar10-jpg.tar.gz] [REPRO_ARGS="--steps 400 --seeds 3"]
REPRO_FLAGS = $(if $(SOURCE_IMAGE_DIR),--images $(SOURCE_IMAGE_DIR)) $(if $(CIFAR),--cifar $(CIFAR)) $(REPRO_ARGS)

repro-cpu:
	$(PY) -m repro table3 $(REPRO_FLAGS)

# Table 1: eight augmentation cells + a seed pair of cell (j) -> docs/results/ablation.md, ablation.png
repro-ablation-cpu:
	$(PY) -m repro table1 $(REPRO_FLAGS)

# Table 3 and Table 1 at the paper's scale on one GPU (docs/training.md, "On a GPU"): MonoGAN and every
# Table 1 cell for MONOGAN_STEPS generator steps (gan_cifar.py's 200,000 by default), supervised and RotNet
# for their own full schedules, bf16 throughout.
# make repro-gpu [MONOGAN_STEPS=200000] [ABLATION_STEPS=200000] [REPRO_ARGS=...]
MONOGAN_STEPS ?= 200000
ABLATION_STEPS ?= $(MONOGAN_STEPS)
repro-gpu:
	$(PY) -m repro table3 --device cuda --ablation --work runs/repro-gpu --out docs/results/gpu-table3.md \
	  --ablation-out docs/results/gpu-ablation.md --workers $(WORKERS) --amp on --no-channels-last \
	  --monogan-steps $(MONOGAN_STEPS) --ablation-steps $(ABLATION_STEPS) --full-schedules --train-minutes 0 \
	  --ablation-minutes 0 $(REPRO_FLAGS)

# make repro-finetune-cpu [SOURCE_IMAGE_DIR=...] [CIFAR=...] [FINETUNE_ARGS="--retrain-steps 800"], after make repro-cpu:
# Tables 4 and 5 and Figs. 3 and 5 from its checkpoints (runs/repro-cpu) -> docs/results/finetune.md (+ figures)
FINETUNE_FLAGS = $(if $(SOURCE_IMAGE_DIR),--images $(SOURCE_IMAGE_DIR)) $(if $(CIFAR),--cifar $(CIFAR)) $(FINETUNE_ARGS)

repro-finetune-cpu:
	$(PY) -m repro table45 $(FINETUNE_FLAGS)

# make repro-distill-cpu [SOURCE_IMAGE_DIR=...] [CIFAR=...] [DISTILL_ARGS="--steps 2000 --seeds 3"]: single-image
# distillation (ICLR 2023) from Table 3's supervised teacher (trained here if absent) -> docs/results/distill.md
DISTILL_FLAGS = $(if $(SOURCE_IMAGE_DIR),--images $(SOURCE_IMAGE_DIR)) $(if $(CIFAR),--cifar $(CIFAR)) $(DISTILL_ARGS)

repro-distill-cpu:
	$(PY) -m repro distill $(DISTILL_FLAGS)

clean:
	rm -rf build *.egg-info .pytest_cache
