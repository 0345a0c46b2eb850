#!/usr/bin/env bash
# Build the test guest: a BIOS-bootable qcow2 made from Debian packages only, without mounting anything.
#   OUT_DIR/disk.qcow2  MBR (syslinux mbr.bin) + one active FAT16 partition holding syslinux, the Debian
#                       cloud kernel and a busybox initramfs; 64 MiB virtual, about 16 MiB on disk
#   OUT_DIR/vmlinuz, OUT_DIR/initrd.gz  the same kernel and initramfs, for direct kernel boot
# The guest's /init finds a cloud-init NoCloud seed (ISO 9660 labelled cidata), prints each file between
#   HVTEST: ----- BEGIN <file> -----  and  HVTEST: ----- END <file> -----   (cimi/user-data included),
# runs udhcpc on eth0 ("HVTEST: dhcp <if> <ip>/<mask> routes <option 121 routes or none>", routes applied),
# runs a #! user-data ("HVTEST: user-data: <line>"), prints "HVTEST: ready", powers off on ACPI (acpid)
# and prints "HVTEST: tick <n>" every 5 s. Tests match substrings: the log holds \r\n and ANSI escapes.
# Needs the Makefile's TEST_PACKAGES (syslinux syslinux-common mtools dosfstools fdisk qemu-utils
# busybox-static) and apt's package lists; the kernel .deb is fetched, never installed.
# Does nothing when OUT_DIR/disk.qcow2 exists and was built by this very script (OUT_DIR/built-by holds
# the script's hash): a changed script rebuilds the image.
# Usage: build-guest-image.sh OUT_DIR
set -euo pipefail
OUT=${1:?usage: build-guest-image.sh OUT_DIR}
BUILT_BY=$(sha256sum "${BASH_SOURCE[0]}" | cut -d' ' -f1)
[ -s "$OUT/disk.qcow2" ] && [ "$(cat "$OUT/built-by" 2>/dev/null)" = "$BUILT_BY" ] &&
  { echo "guest image: $OUT/disk.qcow2 already built"; exit 0; }
SIZE_MIB=64
install -d -m 0755 "$OUT"
W=$(mktemp -d); trap 'rm -rf "$W"' EXIT

# ---- 1. kernel + the modules the guest needs, straight out of the .deb
# virtio (disk, net, balloon, scsi), IDE CD-ROM (ata_piix: the cloud kernel has NO ahci, so no SATA
# CD-ROM), SCSI disk/cdrom, ISO 9660, evdev + button (ACPI power button for acpid)
MODS="virtio virtio_ring virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_scsi
      failover net_failover virtio_net virtio_balloon evdev button
      scsi_common scsi_mod libata ata_piix sd_mod cdrom sr_mod isofs"
fetch_kernel() {  # the versioned package linux-image-cloud-amd64 depends on (the version drifts)
  KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/{print $2; exit}')
  [ -n "$KPKG" ] && (cd "$W" && apt-get download -q -o APT::Sandbox::User=root "$KPKG" >/dev/null)
}
# no package lists yet, or old ones naming a kernel the mirror dropped: refresh once and retry
fetch_kernel || { apt-get update -qq && fetch_kernel; } ||
  { echo "build-guest-image: cannot download the kernel behind linux-image-cloud-amd64" >&2; exit 1; }
pats=('./boot/vmlinuz-*'); for m in $MODS; do pats+=("*/$m.ko"); done
mkdir -p "$W/k"
dpkg-deb --fsys-tarfile "$W"/*.deb | tar -x -C "$W/k" --wildcards "${pats[@]}" ||
  { echo "$KPKG lacks a module above (newer kernels ship .ko.xz: adapt the patterns, unxz)" >&2; exit 1; }

# ---- 2. busybox initramfs (busybox also provides the cpio that packs it)
R="$W/r"; mkdir -p "$R"/{bin,sbin,proc,sys,dev,tmp,mnt/seed,lib/modules,etc/acpi,etc/udhcpc}
cp /bin/busybox "$R/bin/busybox"
for m in $MODS; do cp "$(find "$W/k/lib/modules" -name "$m.ko" | head -1)" "$R/lib/modules/"; done
printf 'PWRF poweroff.sh\n' > "$R/etc/acpid.conf"
printf '#!/bin/sh\nsync\npoweroff -f\n' > "$R/etc/acpi/poweroff.sh"
cat > "$R/etc/udhcpc/default.script" <<'EOF'
#!/bin/sh
# The lease's address and router, and its classless static routes (DHCP option 121, which udhcpc asks
# for with -O staticroutes and passes as "net/len gateway ..."): they replace those of the link's last
# lease, so a route the server no longer sends goes at the next lease. The console line says both.
routes=/tmp/staticroutes.$interface
case "$1" in
  bound|renew) ip addr add "$ip/$mask" dev "$interface" 2>/dev/null
               [ -n "$router" ] && ip route add default via "${router%% *}" dev "$interface" 2>/dev/null
               [ -f "$routes" ] && while read -r net via; do ip route del "$net" via "$via" dev "$interface"; done < "$routes"
               : > "$routes"
               set -- $staticroutes
               while [ $# -ge 2 ]; do
                 ip route add "$1" via "$2" dev "$interface" 2>/dev/null && echo "$1 $2" >> "$routes"; shift 2
               done
               echo "HVTEST: dhcp $interface $ip/$mask routes ${staticroutes:-none}" > /dev/console;;
esac
exit 0
EOF
cat > "$R/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
export PATH=/sbin:/bin
up() { cut -d" " -f1 /proc/uptime; }
echo "HVTEST: init started (uptime $(up)s)"
# load every bundled module; retry passes resolve dependency order without modprobe/modules.dep
todo=$(ls /lib/modules | sed 's/\.ko$//')
for pass in 1 2 3 4 5; do
  left=""; for m in $todo; do insmod /lib/modules/$m.ko 2>/dev/null || left="$left $m"; done
  todo=$left; [ -z "$todo" ] && break
done
[ -n "$todo" ] && echo "HVTEST: insmod failed:$todo"
echo "HVTEST: modules loaded (uptime $(up)s)"
acpid -c /etc/acpi -a /etc/acpid.conf -l /tmp/acpid.log
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  udhcpc -i eth0 -q -n -t 60 -T 1 -O staticroutes >/dev/null 2>&1 &  # async: never delays boot; marker "HVTEST: dhcp"
fi
# ---- NoCloud seed: an ISO 9660 whole disk/CD with volume label cidata or CIDATA (vfat seeds not handled)
iso_label() {   # primary volume descriptor: sector 16 (2048 B), "CD001" at byte 1, label at byte 40
  [ "$(dd if="$1" bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 skip=1 count=5 2>/dev/null)" = CD001 ] || return 1
  dd if="$1" bs=2048 skip=16 count=1 2>/dev/null | dd bs=1 skip=40 count=32 2>/dev/null | tr -d ' '
}
seed=""
# insmod waits for the disk probing a module starts, so the seed is normally found on pass 1; the
# retries cover stragglers. Only whole disks with media (size > 0): empty CD drives are slow to read.
for i in 1 2 3 4 5; do
  for b in /sys/block/sr* /sys/block/vd* /sys/block/sd*; do
    [ -e "$b" ] && [ "$(cat "$b/size")" != 0 ] || continue
    case "$(iso_label "/dev/${b##*/}")" in cidata|CIDATA) seed=/dev/${b##*/}; break 2;; esac
  done
  sleep 0.2
done
echo "HVTEST: seed scan done ${seed:-none} pass $i (uptime $(up)s)"
if [ -n "$seed" ] && mount -t iso9660 -o ro "$seed" /mnt/seed; then
  S=/mnt/seed
  echo "HVTEST: seed $seed files: $(cd $S && find . -type f | sed 's|^\./||' | tr '\n' ' ')"
  for f in meta-data user-data network-config vendor-data cimi/user-data; do
    [ -f $S/$f ] || continue
    echo "HVTEST: ----- BEGIN $f -----"; cat $S/$f
    [ -n "$(tail -c 1 $S/$f)" ] && echo          # file without a final newline
    echo "HVTEST: ----- END $f -----"
  done
  iid=$(sed -n 's/^instance-id: *//p' $S/meta-data 2>/dev/null)
  hn=$(sed -n 's/^local-hostname: *//p' $S/meta-data 2>/dev/null)
  [ -n "$hn" ] && hostname "$hn"
  echo "HVTEST: instance-id=$iid hostname=$(hostname)"
  # cloud-init runs a #! user-data, and the text/x-shellscript part of a MIME multipart one: that
  # part is cimid's consumer userData, which the seed also carries alone as cimi/user-data
  script=""
  if [ "$(head -c 2 $S/user-data 2>/dev/null)" = "#!" ]; then script=$S/user-data
  elif grep -q '^Content-Type: text/x-shellscript' $S/user-data 2>/dev/null &&
       [ "$(head -c 2 $S/cimi/user-data 2>/dev/null)" = "#!" ]; then script=$S/cimi/user-data
  fi
  if [ -n "$script" ]; then
    cp $script /tmp/user-data; chmod +x /tmp/user-data
    /tmp/user-data > /tmp/user-data.out 2>&1; rc=$?
    sed 's/^/HVTEST: user-data: /' /tmp/user-data.out; echo "HVTEST: user-data rc=$rc"
  fi
else
  echo "HVTEST: no cidata seed found"
fi
echo "HVTEST: disks: $(awk 'NR>2{printf "%s ", $4}' /proc/partitions)"
echo "HVTEST: ready (uptime $(up)s)"
n=0
while true; do n=$((n+1)); echo "HVTEST: tick $n"; sleep 5; done
EOF
chmod +x "$R/init" "$R/etc/acpi/poweroff.sh" "$R/etc/udhcpc/default.script"
(cd "$R" && find . | busybox cpio -o -H newc 2>/dev/null | gzip -6 > "$W/initrd.gz")
cp "$W"/k/boot/vmlinuz-* "$W/vmlinuz"

# ---- 3. syslinux config: serial console for both syslinux and the kernel
cat > "$W/syslinux.cfg" <<'EOF'
SERIAL 0 115200
PROMPT 0
TIMEOUT 0
DEFAULT linux
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND console=ttyS0,115200 panic=-1 quiet
EOF

# ---- 4. raw disk: MBR + FAT16 + syslinux, all through mtools (no mount, no loop device).
# Units differ: mkfs.vfat --offset is in sectors (and -h sets the hidden sectors it leaves at 0),
# its block count in KiB, syslinux --offset in bytes, mtools' img@@1M a byte offset.
IMG="$W/disk.raw"
truncate -s "${SIZE_MIB}M" "$IMG"
printf 'label: dos\nstart=2048, type=e, bootable\n' | sfdisk -q "$IMG"   # one active FAT16-LBA partition
mkfs.vfat -F 16 -n TESTBOOT --offset 2048 -h 2048 "$IMG" $(( SIZE_MIB * 1024 - 1024 )) >/dev/null
syslinux --offset $(( 2048 * 512 )) --install "$IMG"
dd if=/usr/lib/syslinux/mbr/mbr.bin of="$IMG" bs=440 count=1 conv=notrunc status=none  # keeps the table
mcopy -i "$IMG@@1M" "$W/syslinux.cfg" "$W/vmlinuz" "$W/initrd.gz" ::/
cp "$W/vmlinuz" "$W/initrd.gz" "$OUT/"
qemu-img convert -f raw -O qcow2 "$IMG" "$OUT/disk.qcow2.tmp"
chmod 0644 "$OUT/vmlinuz" "$OUT/initrd.gz" "$OUT/disk.qcow2.tmp"
mv "$OUT/disk.qcow2.tmp" "$OUT/disk.qcow2"     # last: a half-built image is never taken as built
echo "$BUILT_BY" > "$OUT/built-by"
echo "guest image: $OUT/disk.qcow2 ($(du -h "$OUT/disk.qcow2" | cut -f1), ${SIZE_MIB} MiB virtual," \
     "$KPKG, initrd $(du -h "$W/initrd.gz" | cut -f1))"
