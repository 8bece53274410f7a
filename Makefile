# cryolive: `make demo` and `make test` work on a fresh Debian machine with Python >= 3.11.
# They create .venv when missing, install the package with the extras they need, install the Debian
# packages Qt needs under Xvfb when missing (only when run as root), then run.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cryolive-installed
# What Qt 6 + napari need to draw under Xvfb on a bare Debian, and RELION (the tests compare with it).
DEBS := xvfb xauth libgl1 libgl1-mesa-dri libegl1 libglib2.0-0 libfontconfig1 libdbus-1-3 \
        libxkbcommon-x11-0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-render-util0 \
        libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxcb-cursor0 \
        relion openmpi-bin
# relion: RELION 3.1 (relion_project, relion_reconstruct, relion_refine_mpi), the yardstick the tests compare with

.PHONY: demo test lint gui system-deps venv bench clean-demo sample-data

demo: $(STAMP)
	$(VENV)/bin/cryolive demo --out demo_output

test: system-deps $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/npe2 validate cryolive
	QT_QPA_PLATFORM=xcb $(PY) -m pytest -q -p xvfb --durations=10

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

gui: system-deps $(STAMP)
	$(VENV)/bin/cryolive gui

bench: $(STAMP)
	$(PY) benchmarks/bench_core.py

sample-data: $(STAMP)
	bash sample_data/regenerate.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed: on Debian install python3-venv (apt-get install python3-venv)"; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[all,test]"
	@touch $(STAMP)

system-deps:
	@missing=""; for p in $(DEBS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = "0" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing) >/dev/null; \
	  else \
	    echo "WARNING: missing Debian packages (run as root or install them):$$missing"; \
	  fi; \
	fi

clean-demo:
	rm -rf demo_output
