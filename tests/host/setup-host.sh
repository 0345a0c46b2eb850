#!/usr/bin/env bash
# Make this host ready for tests/host: libvirtd answering on qemu:///system, QEMU under TCG.
# No systemd, no udev, no libvirt-daemon-system here, so this does by hand what they would do.
# Idempotent: safe to run twice; a daemon already running is left alone and not recorded.
# Each daemon it starts goes into $STARTED ("name pid"), and teardown-host.sh stops only those.
# libvirtd runs inside the network namespace $TEST_NETNS, which this script makes, and the tests run in it
# too (`ip netns exec cimid-test pytest`, as `make test` does): the bridges, taps, dnsmasq processes and
# nftables rules the network tests make, and every address on them, exist only in that namespace.
# Needs root and the Makefile's TEST_PACKAGES (`make test` installs them).
set -euo pipefail
STARTED=/run/cimid-test-started
URI=qemu:///system
TEST_NETNS=cimid-test

for c in libvirtd virtlogd virsh qemu-system-x86_64 qemu-img ip dnsmasq nft; do
  command -v "$c" >/dev/null || { echo "setup-host: $c missing: install the Makefile's TEST_PACKAGES" >&2; exit 1; }
done

# 1. What libvirt-daemon-system's postinst would create: libvirtd resolves user and group libvirt-qemu
#    at start-up and refuses to start without them.
getent group kvm >/dev/null || groupadd --system kvm
getent group libvirt >/dev/null || groupadd --system libvirt
getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu
getent passwd libvirt-qemu >/dev/null ||
  useradd --system --no-create-home -d /var/lib/libvirt -g libvirt-qemu -G kvm -s /usr/sbin/nologin libvirt-qemu

# 2. What udev would do. Without it /dev/kvm is root:root 0600; QEMU's user then cannot open it and
#    libvirt re-probes QEMU's capabilities on every domain start (~45 s each). The tests still use TCG
#    (virt_type qemu): this machine's /dev/kvm cannot run a stock guest.
if [ -e /dev/kvm ]; then chgrp kvm /dev/kvm && chmod 0660 /dev/kvm; fi

# 3. Directories the daemons write to (they exit at once if their log directory is missing), and the
#    tests' own: /var/lib is searchable by QEMU's user, unlike /root or /tmp/pytest-of-root.
mkdir -p /var/log/libvirt/qemu /var/lib/libvirt/images /var/lib/libvirt/qemu /var/cache/libvirt
install -d -m 0755 /var/lib/cimid-test

# 4. Where / is not a mount point (a chroot, some containers), libvirt cannot give each guest the mount
#    namespace it makes by default, and QEMU never starts ("Failed disable mount propagation out of the
#    root filesystem"). The libvirtd started here then runs in a mount namespace of its own, in which
#    /etc/libvirt is a copy ($PRIVATE_ETC) whose qemu.conf says `namespaces = []`. The host's /etc/libvirt
#    is not changed; teardown-host.sh removes the copy.
PRIVATE_ETC=/run/cimid-test-etc-libvirt
root_is_mount_point() { awk '$5 == "/" { found = 1 } END { exit !found }' /proc/self/mountinfo; }
mount_point() { awk -v p="$1" '$5 == p { found = 1 } END { exit !found }' /proc/self/mountinfo; }
libvirtd_without_guest_namespaces() {
  rm -rf "$PRIVATE_ETC" && mkdir -p "$PRIVATE_ETC" && cp -a /etc/libvirt/. "$PRIVATE_ETC/"
  { echo "# cimid tests: / is not a mount point here, so no mount namespace per guest"
    echo "namespaces = []"
    sed '/^[[:space:]]*namespaces[[:space:]]*=/d' /etc/libvirt/qemu.conf 2>/dev/null || true
  } > "$PRIVATE_ETC/qemu.conf"
  local mounted_before=no
  mount_point /etc/libvirt && mounted_before=yes
  # A bind of /etc/libvirt onto itself, made private, is what the copy hangs under: so the copy is
  # seen in this namespace only, even where the mount holding / propagates to other namespaces.
  in_test_netns unshare --mount --propagation unchanged -- sh -ec '
    mount --bind /etc/libvirt /etc/libvirt
    mount --make-private /etc/libvirt
    mount --bind "$1" /etc/libvirt
    exec libvirtd -d' sh "$PRIVATE_ETC"
  # Where it does propagate, this namespace got the (harmless) self-bind: teardown-host.sh unmounts it.
  if [ "$mounted_before" = no ] && mount_point /etc/libvirt; then echo "mount /etc/libvirt" >> "$STARTED"; fi
}

# 5. The tests' network namespace (loopback up), and how libvirtd is started inside it. `ip netns exec`
#    remounts /sys, which drops the cgroup v1 controllers libvirt needs for its guests: they are mounted
#    again inside (the v1 ones only: with cgroup2's `unified` visible, per-CPU statistics fail).
if ! ip netns list | grep -qx "$TEST_NETNS\( .*\)\?"; then
  ip netns add "$TEST_NETNS" && echo "netns $TEST_NETNS" >> "$STARTED"
fi
ip netns exec "$TEST_NETNS" ip link set lo up
in_test_netns() {  # in_test_netns COMMAND...: run COMMAND in $TEST_NETNS with the host's cgroup mounts
  local cgroups
  cgroups=$(awk '$3 == "cgroup" && $4 !~ /name=/ {print $2" "$4}' /proc/mounts)
  ip netns exec "$TEST_NETNS" env CIMID_CGROUPS="$cgroups" sh -ec '
    if [ -n "$CIMID_CGROUPS" ]; then
      mount -t tmpfs -o mode=755 cgroup_root /sys/fs/cgroup
      echo "$CIMID_CGROUPS" | while read -r mp opts; do mkdir -p "$mp"; mount -t cgroup -o "$opts" cgroup "$mp"; done
    else
      mount -t cgroup2 cgroup2 /sys/fs/cgroup
    fi
    exec "$@"' sh "$@"
}

alive() {  # alive PIDFILE NAME: the pid file names a live process called NAME
  local pid
  pid=$(cat "$1" 2>/dev/null) && [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}
start() {  # start NAME [COMMAND...]: run COMMAND (default NAME -d), wait for NAME's pid file, record it
  local i name=$1
  shift
  rm -f "/run/$name.pid"
  if [ $# -gt 0 ]; then "$@"; else "$name" -d; fi
  set -- "$name"
  for i in $(seq 1 50); do alive "/run/$1.pid" "$1" && break; sleep 0.1; done
  alive "/run/$1.pid" "$1" || { echo "setup-host: $1 did not start; see /var/log/libvirt/$1.log" >&2; exit 1; }
  echo "$1 $(cat "/run/$1.pid")" >> "$STARTED"
  echo "setup-host: started $1 (pid $(cat "/run/$1.pid"))"
}

# 6. The guest images the host tier boots. Their builds download a kernel .deb, so they run here, before
#    the tests enter $TEST_NETNS, whose only network is what the tests make in it. Kept between runs.
HOST_TESTS=$(cd "$(dirname "$0")" && pwd)
bash "$HOST_TESTS/build-guest-image.sh" /var/lib/cimid-test/guest >/dev/null ||  # at once when built by this script
  { echo "setup-host: build-guest-image.sh failed" >&2; exit 1; }
[ -e /var/lib/cimid-test/lvm-guest/initrd.gz ] ||
  bash "$HOST_TESTS/build-lvm-guest-image.sh" /var/lib/cimid-test/lvm-guest >/dev/null ||
  { echo "setup-host: build-lvm-guest-image.sh failed" >&2; exit 1; }

# 7. virtlogd first (libvirtd hands it the guests' serial logs), then libvirtd.
alive /run/virtlogd.pid virtlogd || start virtlogd
if alive /run/libvirtd.pid libvirtd || virsh -q -c "$URI" version >/dev/null 2>&1; then
  echo "setup-host: libvirtd already running"
  [ "$(readlink "/proc/$(cat /run/libvirtd.pid 2>/dev/null)/ns/net" 2>/dev/null)" = \
    "$(ip netns exec "$TEST_NETNS" readlink /proc/self/ns/net)" ] ||
    echo "setup-host: that libvirtd is not in the netns $TEST_NETNS: the network tests will fail;" \
      "stop it and run this again" >&2
  root_is_mount_point || echo "setup-host: / is not a mount point: unless that libvirtd has" \
    "\`namespaces = []' in its qemu.conf, no guest will start (\`cimid check --profile host' tells)" >&2
elif root_is_mount_point; then
  start libvirtd in_test_netns libvirtd -d
else
  echo "setup-host: / is not a mount point (a chroot?): libvirtd gets its own qemu.conf with namespaces = []"
  start libvirtd libvirtd_without_guest_namespaces
fi

# 8. The first start probes QEMU's capabilities (about 8 s); later ones answer at once.
for i in $(seq 1 300); do
  virsh -q -c "$URI" version >/dev/null 2>&1 && { echo "setup-host: $URI answers"; exit 0; }
  sleep 0.2
done
echo "setup-host: $URI does not answer after 60 s; see /var/log/libvirt/libvirtd.log" >&2
exit 1
