# crashup: build, test, install, run the lab.
#   make demo   the main job: a local lab in which a compute host fails and comes back under Pacemaker
#   make test   every test: fast unit tests, then the real lab (Pacemaker, nova, BMC simulators); needs root
SHELL := /bin/bash
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

# where `make install` puts things
DESTDIR ?=
INSTALL_VENV ?= /opt/crashup
OCF_DIR ?= /usr/lib/ocf/resource.d/crashup
SBIN_DIR ?= /usr/sbin
ETC_DIR ?= /etc/crashup
BIN_DIR ?= /usr/local/bin

# Debian packages the tests and the lab use (installed when running as root and missing); libvirt-dev, pkg-config,
# gcc and python3-dev build libvirt-python (the Health Collector's libvirt backend, tested on libvirt's test driver);
# mariadb-server: throwaway servers for the sweep's tests and bench (tests/lab/mariadb.py; ~35 s to install);
# rabbitmq-server: the lab's notification bus, a throwaway broker without systemd (tests/lab/rabbitmq.py; ~12 s);
# libvirt-daemon ... tini: real qemu guests under a libvirtd per compute node (`lab up --guests`; ~8 s)
DEBS := pacemaker pacemaker-cli-utils pcs corosync resource-agents fence-agents crmsh libxml2-utils ipmitool \
        iproute2 util-linux procps python3-venv libvirt-dev pkg-config gcc python3-dev mariadb-server rabbitmq-server \
        libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 busybox-static cpio tini

.PHONY: all deps venv nova-venv schemas-venv test unit lab-test demo install uninstall bench bench-recovery bench-rejoin \
        bench-sweep bench-bus bench-doctor bench-controllers bench-guests bench-scale bench-silent lab-up lab-down lab-status clean

all: venv

deps:
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q "ok installed" \
	  || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages (run as root to install): $$missing" >&2; exit 1; fi; \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing \
	    >/dev/null; fi

venv: $(VENV)/.stamp
$(VENV)/.stamp: setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt pytest
	# compat editable mode: a plain path entry, so agents start without an import hook
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt --config-settings editable_mode=compat -e ".[test]"
	touch $@

nova-venv: venv
	$(PY) -m tests.lab.nova_env

# nova, cinder and glance with PyMySQL, whose own migrations make the real schemas (tests/lab/schemas.py; ~1 min)
schemas-venv: venv
	$(PY) -m tests.lab.schemas

unit: deps venv schemas-venv
	$(PY) -m pytest -m "not lab" $(PYTEST_ARGS)

lab-test: deps venv nova-venv
	$(PY) -m pytest -m lab $(PYTEST_ARGS)

test: deps venv nova-venv schemas-venv
	$(PY) -m pytest -m "not lab" $(PYTEST_ARGS)
	$(PY) -m pytest -m lab $(PYTEST_ARGS)

demo: deps venv nova-venv
	$(PY) -m tests.lab demo

lab-up: deps venv nova-venv
	$(PY) -m tests.lab up
lab-down: venv
	$(PY) -m tests.lab down
lab-status: venv
	$(PY) -m tests.lab status

bench: deps venv
	$(PY) bench/startup.py
	$(PY) bench/fence_ipmi.py

# host recovery of 50 instances in the lab, against nova alone (root, ~6 min)
bench-recovery: deps venv nova-venv
	$(PY) bench/recovery.py

bench-rejoin: deps venv nova-venv
	$(PY) bench/rejoin.py

# the bus: kombu against oslo.messaging (from the nova venv) on a throwaway RabbitMQ, side by side (~1 min)
bench-bus: deps venv nova-venv
	$(PY) bench/bus.py

# the sweep's scan over 100k nova instance rows, on sqlite and on a throwaway MariaDB (~30 s)
# fencing confirmed -> a consumer on the bus holds crashup.host.failed (OPNFV Doctor: <= 1 s), 7 rounds (root, ~8 min)
bench-doctor: deps venv nova-venv
	$(PY) bench/doctor.py

# a controller lost mid-recovery, in the lab with three controllers, against the same recovery without the loss
# (root, ~8 min)
bench-controllers: deps venv nova-venv
	$(PY) bench/controllers.py

# guest failures (issue 16): watchdog, panic, killed qemu under policy reboot, libvirt's report -> journal, bus,
# guest running again; BENCH_ROUNDS (default 5) rounds with real qemu guests (root, under the lab lock, ~4 min)
bench-guests: deps venv nova-venv
	$(PY) bench/guests.py

bench-sweep: deps venv schemas-venv
	$(PY) bench/sweep.py

# scale (issue 19): the recovery daemon's idle cost against the fleet: a synthetic CIB of 3..1,000 nodes, then the
# lab with BENCH_LIVE compute nodes (default 3,12,24; root, under the lab lock, ~6 min)
bench-scale: deps venv nova-venv
	$(PY) bench/scale.py

# silent host failures (power loss, cut link: no TCP reset): time to fencing with the shipped monitor timings and
# tighter ones, idle and under full CPU load, and the false positives (root, under the lab lock, ~25 min)
bench-silent: deps venv nova-venv
	$(PY) bench/silent.py

# The library goes into its own virtualenv; agents keep `#!/usr/bin/env python3` in the tree and get that venv's
# interpreter as their shebang here, so Pacemaker (which runs them by path, with its own PATH) finds the library.
install:
	test -x $(INSTALL_VENV)/bin/python3 || $(PYTHON) -m venv $(INSTALL_VENV)
	$(INSTALL_VENV)/bin/python3 -m pip install -q --disable-pip-version-check -c constraints.txt ".[sweep,bus]"
	install -d $(DESTDIR)$(OCF_DIR) $(DESTDIR)$(SBIN_DIR) $(DESTDIR)$(ETC_DIR) $(DESTDIR)$(BIN_DIR)
	for f in $(wildcard agents/*); do \
	  sed '1s|^#!.*|#!$(INSTALL_VENV)/bin/python3|' $$f > $(DESTDIR)$(OCF_DIR)/$$(basename $$f); \
	  chmod 755 $(DESTDIR)$(OCF_DIR)/$$(basename $$f); done
	for f in $(wildcard fence/fence_*); do \
	  sed '1s|^#!.*|#!$(INSTALL_VENV)/bin/python3|' $$f > $(DESTDIR)$(SBIN_DIR)/$$(basename $$f); \
	  chmod 755 $(DESTDIR)$(SBIN_DIR)/$$(basename $$f); done
	$(INSTALL_VENV)/bin/crashup config sample > $(DESTDIR)$(ETC_DIR)/crashup.conf.sample
	ln -sf $(INSTALL_VENV)/bin/crashup $(DESTDIR)$(BIN_DIR)/crashup

uninstall:
	rm -f $(addprefix $(DESTDIR)$(OCF_DIR)/,$(notdir $(wildcard agents/*)))
	rm -f $(addprefix $(DESTDIR)$(SBIN_DIR)/,$(notdir $(wildcard fence/fence_*)))
	rm -f $(DESTDIR)$(ETC_DIR)/crashup.conf.sample $(DESTDIR)$(BIN_DIR)/crashup
	-rmdir $(DESTDIR)$(OCF_DIR)

clean:
	-$(PY) -m tests.lab down
	rm -rf $(VENV) build *.egg-info .pytest_cache
