# cimid: `make run` serves the sandbox profile, `make test` runs every test, `make bench` prints figures.
# Both install what they need on Debian 12 (system packages through apt, Python packages in .venv).
# `make test` also runs the real-hypervisor tier (tests/host): it starts libvirtd by hand (no systemd
# needed), boots TCG guests on qemu:///system, and stops afterwards only the daemons it started.

VENV      := .venv
PY        := $(VENV)/bin/python
STATE_DIR ?= ./cimid-state
LISTEN    ?= 127.0.0.1:8080
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Python, a compiler and libvirt's headers (libvirt-python builds from source), CA certificates for pip.
SYSTEM_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libvirt-dev ca-certificates
# The benchmarks load cimid from a second process with wrk.
BENCH_PACKAGES  := wrk
# `make test` only: libvirtd + QEMU for tests/host, and what tests/host/build-guest-image.sh needs to
# build the test guest (syslinux, FAT and MBR tools, busybox; the kernel is fetched with apt-get download).
TEST_PACKAGES   := libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils \
                   busybox-static syslinux syslinux-common mtools dosfstools fdisk

.PHONY: run test test-packages fuzz bench system-packages check clean

run: $(VENV)/.installed
	$(VENV)/bin/cimid serve --profile sandbox --state-dir $(STATE_DIR) --listen $(LISTEN)

# Host set-up (users, /dev/kvm, virtlogd + libvirtd), every test, then the teardown, which always runs
# (also when a test fails or make is interrupted); the exit status is pytest's, and "no test" fails.
test: $(VENV)/.installed test-packages
	@trap '$(SUDO) bash tests/host/teardown-host.sh' EXIT; trap 'exit 130' INT TERM; \
	$(SUDO) bash tests/host/setup-host.sh || { echo "make test: host set-up failed"; exit 1; }; \
	$(VENV)/bin/pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no test: that is a failure"; exit 1; fi; \
	exit $$rc

# The property-based suite (tests/fuzz) with many more examples than the fast tier gives it.
fuzz: $(VENV)/.installed
	CIMID_HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/pytest -q -p no:cacheprovider tests/fuzz --hypothesis-show-statistics

test-packages:
	@$(MAKE) --no-print-directory system-packages SYSTEM_PACKAGES="$(TEST_PACKAGES)"

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
