#!/usr/bin/env bash
# Undo setup-host.sh after the tests: destroy and undefine every libvirt domain named cimid-* and
# remove the fixtures' state directories (what the tests left), then stop the daemons setup-host.sh
# started (recorded in $STARTED), and only those.
# Guests outlive libvirtd, hence the domains first. Always exits 0: it must not mask pytest's status.
set -u
STARTED=/run/cimid-test-started
V="virsh -q -c qemu:///system"

if $V version >/dev/null 2>&1; then
  for d in $($V list --all --name | grep '^cimid-'); do
    echo "teardown-host: removing leftover domain $d"
    $V destroy "$d" >/dev/null 2>&1
    $V undefine "$d" --managed-save --snapshots-metadata >/dev/null 2>&1
  done
fi
rm -rf /var/lib/cimid-test/run-*   # state directories of host_client fixtures that never finished

# libvirtd before virtlogd (the reverse of the start order); each by its recorded pid, if that pid is
# still the daemon of that name.
if [ -s "$STARTED" ]; then
  tac "$STARTED" | while read -r name pid; do
    if [ "$name" = netns ]; then  # the tests' network namespace: its links and addresses go with it
      for p in $(ip netns pids "$pid" 2>/dev/null); do kill "$p"; done  # a test's dnsmasq left running
      ip netns del "$pid" && echo "teardown-host: removed netns $pid"
      continue
    fi
    if [ "$name" = mount ]; then  # the self-bind setup-host.sh's private namespace left here
      umount "$pid" && echo "teardown-host: unmounted $pid"
      continue
    fi
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$name" ] || continue
    kill "$pid"
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "teardown-host: $name ($pid) ignored SIGTERM for 10 s; killing it" >&2; kill -9 "$pid"
    else
      echo "teardown-host: stopped $name ($pid)"
    fi
  done
fi
rm -f "$STARTED"
rm -rf /run/cimid-test-etc-libvirt  # setup-host.sh's private copy of /etc/libvirt, if it made one
exit 0
