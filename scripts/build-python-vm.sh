#!/usr/bin/env bash
# Builds the second test VM, the one with Python (for Ansible): a minimal
# Debian root file system made with debootstrap (python3, qemu-guest-agent,
# sudo) on a raw ext4 disk image, booted under TCG with the busybox test VM's
# Debian cloud kernel and a small initramfs that loads virtio_blk, mounts
# the disk and switches to it. No systemd: the root file system's
# /sbin/virtomate-init links the virtio ports and starts qemu-ga, as the
# busybox VM's init does.
#
# Usage: scripts/build-python-vm.sh [OUTDIR]
#   OUTDIR defaults to target/python-vm in the repository root; it can live
#   outside the checkout (scripts/test-ansible.sh uses
#   /var/cache/virtomate-test/python-vm as root), to be shared by checkouts.
#   Produces OUTDIR/vmlinuz, OUTDIR/initramfs.gz, OUTDIR/rootfs.img and
#   OUTDIR/kernel-version, which scripts/run-test-vm.sh boots with
#   VM_ARTIFACTS=OUTDIR (the disk with snapshot=on: every VM gets its own
#   throw-away copy, so several may boot from it at once).
#
# Environment:
#   VM_ARTIFACTS   the busybox test VM's directory, whose kernel is reused
#                  (default: target/test-vm; built first when needed)
#   DEBIAN_MIRROR  mirror for debootstrap (default: the one apt uses for
#                  the host's release)
#
# Idempotent: when a stamp matching this script, the debootstrap version, the
# kernel and the versions of the guest's packages in the mirror exists, it
# does nothing. Concurrent builds into one OUTDIR are serialised with flock.
# Needs root (debootstrap).
set -euo pipefail

script_dir="$(cd "$(dirname "$0")" && pwd)"
repo_root="$(cd "$script_dir/.." && pwd)"
outdir="${1:-$repo_root/target/python-vm}"
vm_artifacts="${VM_ARTIFACTS:-$repo_root/target/test-vm}"

log() { echo "build-python-vm: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"

"$script_dir/install-deps.sh" </dev/null
"$script_dir/build-test-vm.sh" "$vm_artifacts" </dev/null

mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"
vm_artifacts="$(cd "$vm_artifacts" && pwd)"

exec 9>"$outdir/.lock"
flock 9

suite="$(. /etc/os-release && echo "$VERSION_CODENAME")"
[ -n "$suite" ] || die "cannot tell the host's Debian release"

# Packages beyond minbase. python3 is what Ansible's modules need; sudo for
# `become_method: sudo`; rsync for `rsync -e 'virtomate guest-run -i'`.
# tar and gzip (`copy -r`, `--compress`) are in minbase already: named
# here, their versions are in the stamp and a minbase without them fails.
packages=(python3 qemu-guest-agent sudo rsync tar gzip)

# The version of PACKAGE in the release's main suite, which is what
# debootstrap installs (it ignores -updates and -security).
suite_version() {
  apt-cache madison "$1" 2>/dev/null | awk -F' [|] ' -v s=" $suite/main " 'index($3, s) { print $2; exit }'
}

mirror="${DEBIAN_MIRROR:-}"
if [ -z "$mirror" ]; then
  mirror="$(apt-get indextargets --format '$(REPO_URI)' "Codename: $suite" 'Identifier: Packages' 2>/dev/null | head -n1)"
fi
if [ -z "$mirror" ] || [ -z "$(suite_version python3)" ]; then
  log "package lists lack $suite, running apt-get update"
  apt-get update -q >&2
  [ -n "$mirror" ] || mirror="$(apt-get indextargets --format '$(REPO_URI)' "Codename: $suite" 'Identifier: Packages' | head -n1)"
fi
[ -n "$mirror" ] || die "no Debian mirror for $suite in apt's sources; set DEBIAN_MIRROR"

stamp_file="$outdir/.stamp"
stamp="script=$(sha256sum "$script_dir/build-python-vm.sh" | cut -d' ' -f1)
debootstrap=$(dpkg-query -W -f='${Version}' debootstrap)
kernel=$(cat "$vm_artifacts/kernel-version")
suite=$suite"
for p in "${packages[@]}"; do
  v="$(suite_version "$p")"
  [ -n "$v" ] || die "no version of $p in $suite/main"
  stamp="$stamp
$p=$v"
done

if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
  ok=1
  for f in vmlinuz initramfs.gz rootfs.img; do [ -f "$outdir/$f" ] || ok=; done
  [ -z "$ok" ] || exit 0
fi
rm -f "$stamp_file"
started=$SECONDS

work="$(mktemp -d "$outdir/build.XXXXXX")"
cleanup() {
  # debootstrap may leave proc/sys mounted in the chroot when it fails.
  for m in proc sys dev/pts dev; do
    mountpoint -q "$work/root/$m" 2>/dev/null && umount -l "$work/root/$m" || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# --- Root file system -----------------------------------------------------

debs="$outdir/cache/debs"
mkdir -p "$debs"
root="$work/root"
log "debootstrap $suite from $mirror"
include="$(IFS=,; echo "${packages[*]}")"
if ! debootstrap --variant=minbase --include="$include" --cache-dir="$debs" \
  "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
  die "debootstrap failed"
fi

# An unprivileged user to become (sudo and su work from root without a
# password), with a shell su can run.
chroot "$root" useradd --create-home --shell /bin/sh --uid 1000 alice
echo virtomate-py >"$root/etc/hostname"
printf '127.0.0.1 localhost virtomate-py\n' >"$root/etc/hosts"

# What a VM never uses: docs, translations, apt's caches.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
  "$root"/usr/share/locale/* "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* \
  "$root"/var/log/*.log "$root/debootstrap"

cat >"$root/sbin/virtomate-init" <<'EOF'
#!/bin/sh
# PID 1 of the virtomate Python test VM, after the initramfs switched to the
# disk. No systemd: it links the virtio ports and starts qemu-ga, as the
# busybox test VM does. Like a systemd service, qemu-ga gets no HOME.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
unset HOME
exec </dev/console >/dev/console 2>&1

mountpoint -q /proc || mount -t proc proc /proc
mountpoint -q /sys || mount -t sysfs sysfs /sys
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /tmp
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=0620 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
hostname -F /etc/hostname
ip link set lo up 2>/dev/null || true

mkdir -p /dev/virtio-ports
for port in /sys/class/virtio-ports/vport*; do
  [ -e "$port/name" ] || continue
  name=$(cat "$port/name")
  [ -n "$name" ] || continue
  ln -sf "/dev/${port##*/}" "/dev/virtio-ports/$name"
done

noagent=
for arg in $(cat /proc/cmdline); do
  [ "$arg" = virtomate.noagent ] && noagent=1
done

if [ -z "$noagent" ]; then
  n=0
  for dev in /dev/virtio-ports/org.qemu.guest_agent.*; do
    [ -e "$dev" ] || continue
    mkdir -p "/run/qga-$n"
    /usr/sbin/qemu-ga -m virtio-serial -p "$dev" -t "/run/qga-$n" -f "/run/qga-$n/qemu-ga.pid" &
    n=$((n + 1))
  done
fi

echo "virtomate-test-vm: ready"

# Stay alive as PID 1 and reap whatever gets orphaned.
while true; do
  wait
  sleep 1
done
EOF
chmod 755 "$root/sbin/virtomate-init"
chroot "$root" /usr/bin/python3 -c pass || die "python3 does not run in the new root"

# Room for what tests copy in (the disk is a throw-away snapshot per VM).
size_mib=$(($(du -sm "$root" | cut -f1) * 5 / 4 + 256))
mkfs.ext4 -q -F -L virtomate-root -d "$root" "$work/rootfs.img" "${size_mib}M" >/dev/null

# --- Initramfs: virtio_blk, mount the disk, switch to it ------------------

read -r kernel_pkg kernel_version kver <"$vm_artifacts/kernel-version"
deb="$vm_artifacts/cache/${kernel_pkg}_${kernel_version}_amd64.deb"
[ -f "$deb" ] || die "$deb missing: run scripts/build-test-vm.sh $vm_artifacts"
kx="$work/kernel"
dpkg -x "$deb" "$kx"
moddir=
for d in "$kx/lib/modules/$kver" "$kx/usr/lib/modules/$kver"; do
  [ -d "$d/kernel" ] && moddir="$d"
done
[ -n "$moddir" ] || die "no modules for $kver in $deb"
config="$kx/boot/config-$kver"

ird="$work/initramfs"
mkdir -p "$ird"/{bin,dev,proc,sys,newroot,lib/modules}
cp /bin/busybox "$ird/bin/busybox"
for applet in sh mount umount insmod switch_root sleep cat echo mkdir ls; do
  ln -s busybox "$ird/bin/$applet"
done

# ext4 is built into Debian's cloud kernel; virtio is not.
: >"$ird/lib/modules/load-order"
for mod in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk virtio_console; do
  src="$(find "$moddir/kernel" -name "$mod.ko" -o -name "$mod.ko.xz" -o -name "$mod.ko.zst" | head -n1)"
  if [ -z "$src" ]; then
    grep -q "/$mod\.ko\$" "$moddir/modules.builtin" 2>/dev/null && continue
    die "module $mod neither found nor built in"
  fi
  case "$src" in
    *.ko.xz) xz -dc "$src" >"$ird/lib/modules/$mod.ko" ;;
    *.ko.zst) zstd -q -dc "$src" >"$ird/lib/modules/$mod.ko" ;;
    *) cp "$src" "$ird/lib/modules/$mod.ko" ;;
  esac
  echo "$mod" >>"$ird/lib/modules/load-order"
done
grep -qx 'CONFIG_EXT4_FS=y' "$config" || die "ext4 is not built into $kver"

cat >"$ird/init" <<'EOF'
#!/bin/sh
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sysfs /sys
while read -r mod; do
  insmod "/lib/modules/$mod.ko" || echo "virtomate-python-vm: insmod $mod failed"
done </lib/modules/load-order
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
if ! mount -t ext4 -o rw,noatime /dev/vda /newroot; then
  echo "virtomate-python-vm: cannot mount /dev/vda"
  exec sh
fi
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /sbin/virtomate-init
EOF
chmod 755 "$ird/init"
(cd "$ird" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --owner=0:0 --quiet) | gzip -n -6 >"$work/initramfs.gz"

# --- Install --------------------------------------------------------------

cp "$vm_artifacts/vmlinuz" "$work/vmlinuz"
mv -f "$work/vmlinuz" "$outdir/vmlinuz"
mv -f "$work/initramfs.gz" "$outdir/initramfs.gz"
mv -f "$work/rootfs.img" "$outdir/rootfs.img"
cp "$vm_artifacts/kernel-version" "$outdir/kernel-version"
printf '%s\n' "$stamp" >"$stamp_file"
log "built $outdir in $((SECONDS - started)) s ($(du -sh --apparent-size "$outdir/rootfs.img" | cut -f1) disk, $(du -sh "$outdir/rootfs.img" | cut -f1) used)"
