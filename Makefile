# One command each, on a fresh Debian 12 machine (root or sudo): everything is installed by scripts/setup.sh.
PY := .venv/bin/python
export QT_QPA_PLATFORM ?= offscreen

.PHONY: setup test demo plugin clean

setup:
	@bash scripts/setup.sh

test: setup
	@bash scripts/run_tests.sh

demo: setup
	$(PY) -m mtp_core.cli demo

clean:
	rm -rf .venv .pytest_cache demo_out tests/artifacts

plugin: setup
	bash scripts/build_plugin.sh
