# MedViewer — the two set-up commands of a fresh machine are `make demo` and `make test`.
#
# Both install into the active virtual environment ($VIRTUAL_ENV) or, when none is active, into .venv in
# this folder (created with `python3 -m venv`) — never into the system Python, which Debian 12 / Ubuntu
# 23.04+ refuse anyway (PEP 668). `make demo` installs the app only (no torch); `make test` adds the
# training and dev extras. The stamps live inside the environment, so another environment reinstalls.
#
# torch: `make test` installs torch (version from constraints.txt) first, from TORCH_INDEX when given:
#   make test                                                    # default index: CUDA build on Linux x86_64
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu   # CPU-only build (no GPU, ~10x smaller)
PYTHON ?= python3
ifdef VIRTUAL_ENV
VENV ?= $(VIRTUAL_ENV)
else
VENV ?= $(CURDIR)/.venv
endif
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_INDEX ?=
DEPS := pyproject.toml setup.py constraints.txt
APP_STAMP := $(VENV)/.medviewer-app.stamp
DEV_STAMP := $(VENV)/.medviewer-dev.stamp
BUNDLE_STAMP := $(VENV)/.medviewer-bundle.stamp

.PHONY: install install-dev demo test lint system-packages wheel bundle bench clean distclean screenshots docs

$(PY):
	@echo "creating the virtual environment $(VENV) (none is active)"
	@$(PYTHON) -m venv "$(VENV)" || { echo "make: '$(PYTHON) -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv (or activate a venv first)" >&2; exit 1; }
	$(PIP) install -q --upgrade pip

$(APP_STAMP): $(DEPS) | $(PY)
	$(PIP) install -q -c constraints.txt -e .
	touch "$@"

$(DEV_STAMP): $(APP_STAMP) $(DEPS)
	$(PIP) install -q -c constraints.txt $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) torch
	$(PIP) install -q -c constraints.txt -e ".[train,dev]"
	touch "$@"

install: $(APP_STAMP)
install-dev: $(DEV_STAMP)

# With no display (a server, CI) the demo runs offscreen and saves what it shows to demo.png.
demo: $(APP_STAMP)
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then "$(VENV)/bin/medviewer" --demo; \
	else echo "no display: running the demo offscreen, window saved to demo.png"; \
	"$(VENV)/bin/medviewer" --demo --screenshot demo.png; fi

lint: $(DEV_STAMP)
	$(PY) -m ruff check medviewer training tests benchmarks tools
	$(PY) -m mypy  # medviewer/workstation, inference, io: the files and settings are in pyproject.toml [tool.mypy]

# Orthanc and dicom3tools for the PACS and DICOM-conformance tests (installed when root; they skip otherwise)
system-packages:
	@if [ "$$(id -u)" = 0 ]; then bash .ci/system-packages.sh; \
	else echo "not root: not installing Orthanc/dicom3tools (.ci/system-packages.sh); tests that need them skip"; fi

test: $(DEV_STAMP) lint system-packages
	QT_QPA_PLATFORM=offscreen $(PY) -m pytest -q
	$(PY) -m mkdocs build --strict --quiet  # the docs site: a broken link or missing page fails

# dist/medviewer-VERSION-py3-none-any.whl, carrying the built-in models, icon and demo data
wheel: | $(PY)
	rm -f dist/medviewer-*.whl
	$(PIP) wheel -q --no-deps -w dist .

$(BUNDLE_STAMP): $(APP_STAMP) constraints.txt
	$(PIP) install -q -c constraints.txt pyinstaller
	touch "$@"

# PyInstaller one-folder desktop bundle: dist/medviewer/medviewer (no torch, no source tree needed), with
# install-desktop.sh for the launcher and icon
# PyInstaller's log goes to build/pyinstaller.log; shown are only the warnings not known to be harmless:
# its start-up INFO lines, the CUDA/cuDNN/TensorRT libraries ONNX Runtime's GPU providers load from the
# machine's CUDA install at run time (never bundled), the GTK3 theme plugin's GTK (a desktop has it, Qt
# falls back without it) and Windows DLLs named in ctypes calls are counted, not printed.
BUNDLE_KNOWN := ( INFO: |Library (shell32|ole32) required via ctypes not found|could not resolve 'lib(cublas|cublasLt|curand|cufft|cudart|cudnn|nvinfer|nvonnxparser|nvrtc)[^']*', dependency of '[^']*libonnxruntime_providers_(cuda|tensorrt)\.so'|could not resolve 'lib(gtk|gdk)-3\.so\.0', dependency of '[^']*libqgtk3\.so')
bundle: $(BUNDLE_STAMP)
	@mkdir -p build
	@echo "bundle: PyInstaller one-folder build (a few minutes; log: build/pyinstaller.log)"
	@$(PY) -m PyInstaller --noconfirm --log-level WARN --distpath dist --workpath build/pyinstaller \
	    packaging/medviewer.spec > build/pyinstaller.log 2>&1 || { cat build/pyinstaller.log; exit 1; }
	@grep -Ev "$(BUNDLE_KNOWN)" build/pyinstaller.log || true
	@echo "bundle: $$(grep -Ec "$(BUNDLE_KNOWN)" build/pyinstaller.log) known-harmless log lines not shown"
	@install -m 755 packaging/install-desktop.sh dist/medviewer/install-desktop.sh
	@install -m 644 packaging/medviewer.desktop dist/medviewer/medviewer.desktop
	@echo "bundle: dist/medviewer ($$(du -sm dist/medviewer | cut -f1) MiB); run dist/medviewer/medviewer --demo"

# docs/screenshots/*.png from the current code (tools/screenshots.py all): the demo window exactly as
# `medviewer --demo --screenshot` shows it, the CT measurements (needs ../shared/data) and the model card,
# with empty settings and no user models. Without a display it runs under Xvfb (as root:
# `make system-packages` installs it); `make test` fails when docs/screenshots/demo.png no longer matches.
XVFB_RUN := xvfb-run -a -s "-screen 0 1920x1200x24"
screenshots: $(APP_STAMP)
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then $(PY) tools/screenshots.py all docs/screenshots; \
	elif command -v xvfb-run >/dev/null; then $(XVFB_RUN) $(PY) tools/screenshots.py all docs/screenshots; \
	else echo "make screenshots: no display and no xvfb-run (as root: make system-packages)" >&2; exit 1; fi

# the documentation site: docs/cli-reference.md from the argparse parsers, then a strict MkDocs build
# (a broken link or a missing page fails) into build/site; open build/site/index.html
docs: $(DEV_STAMP)
	$(PY) tools/cli_reference.py
	$(PY) -m mkdocs build --strict --quiet
	@echo "docs: build/site/index.html"

bench: $(DEV_STAMP)
	$(PY) benchmarks/bench_display.py

clean:
	rm -rf build dist *.egg-info .pytest_cache demo.png

distclean: clean
	rm -rf .venv
