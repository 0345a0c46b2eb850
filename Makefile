# cimid: `make run` serves the sandbox profile, `make test` runs every test, `make bench` prints figures.
# Both install what they need on Debian 12 (system packages through apt, Python packages in .venv).

VENV      := .venv
PY        := $(VENV)/bin/python
STATE_DIR ?= ./cimid-state
LISTEN    ?= 127.0.0.1:8080
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Python, a compiler and libvirt's headers (libvirt-python builds from source), CA certificates for pip.
SYSTEM_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libvirt-dev ca-certificates
# The benchmarks load cimid from a second process with wrk.
BENCH_PACKAGES  := wrk

.PHONY: run test bench system-packages check clean

run: $(VENV)/.installed
	$(VENV)/bin/cimid serve --profile sandbox --state-dir $(STATE_DIR) --listen $(LISTEN)

test: $(VENV)/.installed
	@$(VENV)/bin/pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no test: that is a failure"; exit 1; fi; \
	exit $$rc

bench: $(VENV)/.installed
	@$(MAKE) --no-print-directory system-packages SYSTEM_PACKAGES="$(BENCH_PACKAGES)"
	$(PY) bench/run.py

check: $(VENV)/.installed
	$(VENV)/bin/cimid check --profile sandbox --state-dir $(STATE_DIR)

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:" $$missing; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: pyproject.toml | system-packages
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

clean:
	rm -rf $(VENV) $(STATE_DIR) .pytest_cache
