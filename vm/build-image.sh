#!/usr/bin/env bash
# Build the cgroup v2 test VM once: a Debian 12 root file system (debootstrap) with Debian's
# kernel package, as an ext4 disk image plus the kernel and initrd to boot it with qemu.
# Cached in $VM_CACHE/<hash of this script>; prints that directory on its last line.
# Needs root, debootstrap, e2fsprogs (mkfs.ext4 -d) and the network to Debian's mirror.
set -euo pipefail

VM_CACHE=${VM_CACHE:-/var/cache/sandbox-vm}
# Debian's cloud kernel has no 9p (virtio file sharing), which the guest needs.
KERNEL_PACKAGE=linux-image-amd64
SUITE=bookworm
# What the guest needs to run the README's set-up command and the tests without apt.
PACKAGES=systemd-sysv,udev,kmod,iproute2,procps,ca-certificates,make,python3,python3-venv,libseccomp2,libstdc++6,$KERNEL_PACKAGE
DISK_SIZE=8G

key=$(sha256sum "$0" | cut -c1-16)
out="$VM_CACHE/$key"
if [[ -f "$out/ready" ]]; then
    echo "VM image is cached: $out"
    echo "$out"
    exit 0
fi

log() { echo "[vm-build $(date +%T)] $*" >&2; }

# Debian's mirror as this machine's apt is configured (no host is named here).
mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 'Identifier: Packages' 2>/dev/null \
         | awk -v s="$SUITE" '$2 == s {print $1; exit}')
if [[ -z "$mirror" ]]; then
    echo "no apt source for Debian $SUITE is configured on this machine (see /etc/apt/sources.list*); run apt-get update" >&2
    exit 1
fi
for tool in debootstrap mkfs.ext4; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install debootstrap e2fsprogs" >&2; exit 1; }
done

mkdir -p "$VM_CACHE"
for stale in "$VM_CACHE"/.build-*; do  # left by a build that was killed
    [[ -d $stale && ! -e /proc/${stale##*-} ]] && ! grep -q " $stale/" /proc/mounts && rm -rf --one-file-system "$stale"
done
work="$VM_CACHE/.build-$key-$$"
rm -rf "$work"
trap 'umount -R "$work/root/proc" "$work/root/sys" "$work/root/dev" 2>/dev/null || true; rm -rf --one-file-system "$work"' EXIT
mkdir -p "$work/root"

log "debootstrap $SUITE from $mirror (with $KERNEL_PACKAGE); this takes a few minutes"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/root" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -30 "$work/debootstrap.log" >&2; exit 1; }
r="$work/root"

log "configuring the guest"
echo sandbox-cgroup2 >"$r/etc/hostname"
echo "127.0.1.1 sandbox-cgroup2" >>"$r/etc/hosts"
# qemu's user-mode network: fixed addresses, its DNS forwarder at 10.0.2.3.
cat >"$r/etc/systemd/network/10-qemu.network" <<'NET'
[Match]
Name=en* eth*

[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
NET
echo "nameserver 10.0.2.3" >"$r/etc/resolv.conf"
ln -sf /lib/systemd/system/systemd-networkd.service "$r/etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
# The guest runs one thing at boot: the check script from the shared checkout; then powers off.
cat >"$r/etc/systemd/system/sandbox-vm-check.service" <<'UNIT'
[Unit]
Description=sandbox cgroup v2 check (vm/guest-check.sh from the shared checkout)
After=network.target systemd-networkd.service local-fs.target
Wants=systemd-networkd.service

[Service]
Type=oneshot
ExecStartPre=/bin/mkdir -p /mnt/src
ExecStartPre=/bin/mount -t 9p -o trans=virtio,version=9p2000.L,ro src /mnt/src
ExecStart=/bin/bash /mnt/src/vm/guest-check.sh
StandardOutput=tty
StandardError=inherit
TTYPath=/dev/ttyS0
ExecStopPost=/bin/systemctl --no-block poweroff
UNIT
ln -sf /etc/systemd/system/sandbox-vm-check.service "$r/etc/systemd/system/multi-user.target.wants/sandbox-vm-check.service"
# Nothing else on the serial console.
ln -sf /dev/null "$r/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$r/etc/systemd/system/getty@tty1.service"
printf '9p\n9pnet\n9pnet_virtio\n' >"$r/etc/modules-load.d/9p.conf"
: >"$r/etc/fstab"
rm -f "$r"/var/cache/apt/archives/*.deb

kernel=$(ls "$r"/boot/vmlinuz-* | sort -V | tail -1)
initrd=$(ls "$r"/boot/initrd.img-* | sort -V | tail -1)
config=$(ls "$r"/boot/config-* | sort -V | tail -1)
for opt in CONFIG_NET_9P_VIRTIO CONFIG_9P_FS CONFIG_VIRTIO_BLK CONFIG_EXT4_FS; do
    grep -Eq "^$opt=(y|m)" "$config" || { echo "$KERNEL_PACKAGE lacks $opt" >&2; exit 1; }
done

log "making the $DISK_SIZE ext4 disk image"
mkdir -p "$work/out"
cp "$kernel" "$work/out/vmlinuz"
cp "$initrd" "$work/out/initrd.img"
chmod 644 "$work/out/vmlinuz" "$work/out/initrd.img"
truncate -s "$DISK_SIZE" "$work/out/rootfs.ext4"
mkfs.ext4 -q -F -L sandbox-vm -d "$r" "$work/out/rootfs.ext4"
basename "$kernel" >"$work/out/kernel-version"
rm -rf "$out"
mv "$work/out" "$out"
touch "$out/ready"
for old in "$VM_CACHE"/*/ready; do  # images of earlier versions of this script
    [[ -e $old && $(dirname "$old") != "$out" ]] && rm -rf --one-file-system "$(dirname "$old")"
done
log "VM image ready in $out ($(du -sh "$out" | cut -f1) used)"
echo "$out"
