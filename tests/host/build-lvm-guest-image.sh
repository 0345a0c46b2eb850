#!/usr/bin/env bash
# Build the LVM helper guest: the Debian cloud kernel plus a busybox initramfs carrying the kernel's
# device-mapper modules (thin pool, snapshot) and this host's lvm binary with its libraries, for LVM
# with device nodes, which the host kernel lacks (hypervisor-ci.md §4). Booted directly (no disk image).
#   OUT_DIR/vmlinuz, OUT_DIR/initrd.gz
# The guest prints "HVTEST: ready" on its console and runs a root shell on its second serial port
# (ttyS1), which tests drive through a unix socket. lvm runs there without udev or lvmpolld.
# Needs lvm2, busybox-static and apt's package lists; the kernel .deb is fetched, never installed.
# Does nothing when OUT_DIR/initrd.gz exists (delete it to rebuild).
# Usage: build-lvm-guest-image.sh OUT_DIR
set -euo pipefail
OUT=${1:?usage: build-lvm-guest-image.sh OUT_DIR}
[ -s "$OUT/initrd.gz" ] && [ -s "$OUT/vmlinuz" ] && { echo "lvm guest: $OUT already built"; exit 0; }
install -d -m 0755 "$OUT"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT

MODS="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk
      dm-mod dm-bufio dm-bio-prison libcrc32c crc32c_generic dm-persistent-data dm-thin-pool dm-snapshot"
fetch_kernel() {  # the versioned package linux-image-cloud-amd64 depends on (the version drifts)
  KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$KPKG" ] && (cd "$W" && apt-get download -q -o APT::Sandbox::User=root "$KPKG" >/dev/null)
}
fetch_kernel || { apt-get update -qq && fetch_kernel; } ||
  { echo "build-lvm-guest-image: cannot download the kernel behind linux-image-cloud-amd64" >&2; exit 1; }
pats=('./boot/vmlinuz-*'); for m in $MODS; do pats+=("*/$m.ko"); done
mkdir -p "$W/k"
dpkg-deb --fsys-tarfile "$W"/*.deb | tar -x -C "$W/k" --wildcards "${pats[@]}" 2>/dev/null || true
[ -n "$(ls "$W"/k/boot/vmlinuz-* 2>/dev/null)" ] || { echo "no kernel in $KPKG" >&2; exit 1; }

R="$W/r"; mkdir -p "$R"/{bin,sbin,proc,sys,dev,tmp,run/lock/lvm,lib/modules,etc/lvm}
cp /bin/busybox "$R/bin/busybox"
for m in $MODS; do  # crc32c_generic is built in on some kernels: a missing one is skipped
  f=$(find "$W/k/lib/modules" -name "$m.ko" | head -1); [ -n "$f" ] && cp "$f" "$R/lib/modules/"
done
for m in dm-mod dm-thin-pool dm-snapshot virtio_blk; do
  [ -e "$R/lib/modules/$m.ko" ] || { echo "module $m missing from $KPKG (.ko.xz? adapt the patterns)" >&2; exit 1; }
done
cp /sbin/lvm /sbin/dmsetup "$R/sbin/"
for b in /sbin/lvm /sbin/dmsetup; do ldd "$b" | awk '/=>/{print $3} /ld-linux/{print $1}'; done | sort -u |
  while read -r l; do mkdir -p "$R$(dirname "$l")"; cp -L "$l" "$R$l"; done
cat > "$R/etc/lvm/lvm.conf" <<'CONF'
global { thin_check_executable = "" use_lvmpolld = 0 event_activation = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
devices { obtain_device_list_from_udev = 0 }
CONF
cat > "$R/init" <<'INIT'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
export PATH=/sbin:/bin LVM_SUPPRESS_FD_WARNINGS=1
todo=$(ls /lib/modules | sed 's/\.ko$//')
for pass in 1 2 3 4 5; do  # retry passes resolve dependency order without modprobe
  left=""; for m in $todo; do insmod /lib/modules/$m.ko 2>/dev/null || left="$left $m"; done
  todo=$left; [ -z "$todo" ] && break
done
[ -n "$todo" ] && echo "HVTEST: insmod failed:$todo"
echo "HVTEST: ready (uptime $(cut -d' ' -f1 /proc/uptime)s)"
while true; do setsid sh -c 'exec sh -i </dev/ttyS1 >/dev/ttyS1 2>&1'; done &
while true; do sleep 60; done
INIT
chmod +x "$R/init"
(cd "$R" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -1 > "$W/initrd.gz")
cp "$W"/k/boot/vmlinuz-* "$OUT/vmlinuz.tmp"
chmod 0644 "$OUT/vmlinuz.tmp" "$W/initrd.gz"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
cp "$W/initrd.gz" "$OUT/initrd.gz.tmp" && mv "$OUT/initrd.gz.tmp" "$OUT/initrd.gz"  # last: never half-built
echo "lvm guest: $KPKG, initrd $(du -h "$OUT/initrd.gz" | cut -f1)"
