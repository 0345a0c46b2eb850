# cimid: `make run` serves the sandbox profile, `make test` runs every test, `make bench` prints figures.
# Both install what they need on Debian 12 (system packages through apt, Python packages in .venv),
# one line per phase; the installers' output goes to $(LOG), whose path and tail are shown if one fails.
# `make test` also runs the real-hypervisor tier (tests/host): it starts libvirtd by hand (no systemd
# needed), boots TCG guests on qemu:///system, and stops afterwards only the daemons it started.

VENV      := .venv
PY        := $(VENV)/bin/python
STATE_DIR ?= ./cimid-state
LISTEN    ?= 127.0.0.1:8080
SUDO      := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
LOG       := $(CURDIR)/install.log
# `quietly "WHAT" COMMAND...`: says WHAT, runs COMMAND with its output appended to $(LOG).
QUIETLY   := quietly() { what=$$1; shift; echo "make: $$what"; echo "=== $$what" >>"$(LOG)"; \
               "$$@" >>"$(LOG)" 2>&1 || { echo "make: $$what: FAILED; its output is in $(LOG), which ends:"; \
               tail -n 20 "$(LOG)" | sed 's/^/  /'; exit 1; }; }
# Python, a compiler and libvirt's headers (libvirt-python builds from source), CA certificates for pip.
SYSTEM_PACKAGES := python3 python3-venv python3-dev gcc pkg-config libvirt-dev ca-certificates
# The benchmarks load cimid from a second process with wrk; the federation one runs etcd.
BENCH_PACKAGES  := wrk etcd-server etcd-client
# `make test` only: libvirtd + QEMU for tests/host, what tests/host/build-guest-image.sh needs to build
# the test guest (syslinux, FAT and MBR tools, busybox; the kernel is fetched with apt-get download),
# curl for tests/test_readme_tour.py, lvm2 for the lvm pool's tests (the host's lvm on loop devices,
# and the binary the LVM helper guest carries: tests/host/build-lvm-guest-image.sh), etcd (server
# and etcdctl) for the federation tests (tests/cluster, tests/front), iproute2 (`ip netns`) for the tests'
# network namespace, dnsmasq-base and libnftables1 (which it drives in-process) for the bridge network
# driver, nftables (the nft command) for the tests that take its table away as a reboot would.
TEST_PACKAGES   := curl iproute2 dnsmasq-base libnftables1 nftables libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients \
                   qemu-system-x86 qemu-utils busybox-static syslinux syslinux-common mtools dosfstools fdisk lvm2 \
                   etcd-server etcd-client

.PHONY: run test test-packages fuzz bench system-packages check clean

run: $(VENV)/.installed
	$(VENV)/bin/cimid serve --profile sandbox --state-dir $(STATE_DIR) --listen $(LISTEN)

# Host set-up (users, /dev/kvm, virtlogd + libvirtd), every test, then the teardown, which always runs
# (also when a test fails or make is interrupted). pytest runs inside the network namespace cimid-test, which
# setup-host.sh makes and runs libvirtd in, so everything the network tests make stays inside it. The
# recipe fails when pytest fails or collects no test, and says pytest's status; make itself then exits 2,
# as it does for any failed recipe.
test: $(VENV)/.installed-test test-packages
	@trap '$(SUDO) bash tests/host/teardown-host.sh' EXIT; trap 'exit 130' INT TERM; \
	$(SUDO) bash tests/host/setup-host.sh || { echo "make test: host set-up failed"; exit 1; }; \
	$(SUDO) ip netns exec cimid-test $(VENV)/bin/pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no test: that is a failure"; exit 1; fi; \
	if [ $$rc -ne 0 ]; then echo "make test: pytest exited $$rc"; fi; \
	exit $$rc

# The property-based suite (tests/fuzz) with many more examples than the fast tier gives it.
fuzz: $(VENV)/.installed-test
	CIMID_HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/pytest -q -p no:cacheprovider tests/fuzz --hypothesis-show-statistics

test-packages:
	@$(MAKE) --no-print-directory system-packages SYSTEM_PACKAGES="$(TEST_PACKAGES)"

bench: $(VENV)/.installed-bench
	@$(MAKE) --no-print-directory system-packages SYSTEM_PACKAGES="$(BENCH_PACKAGES)"
	$(PY) bench/run.py

check: $(VENV)/.installed
	$(VENV)/bin/cimid check --profile sandbox --state-dir $(STATE_DIR)

system-packages:
	@missing=$$(for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	[ -z "$$missing" ] && exit 0; $(QUIETLY); \
	quietly "system packages (apt-get): $$(echo $$missing)" $(SUDO) env DEBIAN_FRONTEND=noninteractive \
		sh -c 'apt-get update -q && apt-get install -y -q --no-install-recommends "$$@"' apt $$missing

# The runtime dependencies only (`make run`, `make bench`, `make check`); `make test` adds the test extras.
$(VENV)/.installed: pyproject.toml | system-packages
	@$(QUIETLY); \
	quietly "virtualenv $(VENV) with cimid and its runtime dependencies (pip)" \
		sh -c 'python3 -m venv $(VENV) && $(VENV)/bin/pip install --upgrade pip && $(VENV)/bin/pip install -e .'
	@touch $@

# The federation benchmark needs the federation extra (aetcd, grpcio).
$(VENV)/.installed-bench: $(VENV)/.installed
	@$(QUIETLY); quietly "federation extra in $(VENV) (pip)" $(VENV)/bin/pip install -e '.[federation]'
	@touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	@$(QUIETLY); quietly "test extras in $(VENV) (pip)" $(VENV)/bin/pip install -e '.[test]'
	@touch $@

clean:
	rm -rf $(VENV) $(STATE_DIR) .pytest_cache $(LOG)
