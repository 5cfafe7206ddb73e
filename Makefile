# MedViewer — the two set-up commands of a fresh machine are `make demo` and `make test`.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
STAMP := .install.stamp

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e ".[train,dev]"
	touch $(STAMP)

install: $(STAMP)

# With no display (a server, CI) the demo runs offscreen and saves what it shows to demo.png.
demo: install
	@if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ]; then medviewer --demo; \
	else echo "no display: running the demo offscreen, window saved to demo.png"; \
	medviewer --demo --screenshot demo.png; fi

lint: install
	$(PYTHON) -m ruff check medviewer training tests benchmarks

test: install lint
	QT_QPA_PLATFORM=offscreen $(PYTHON) -m pytest -q

bench: install
	$(PYTHON) benchmarks/bench_display.py

clean:
	rm -rf $(STAMP) build *.egg-info .pytest_cache
