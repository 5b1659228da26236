#!/usr/bin/env bash
# The tests marked `rdma`, for real, on soft-RoCE (rdma_rxe) inside a QEMU VM, on a host whose kernel
# has no RDMA. Exits with pytest's status.
#
#   tests/rdma/vm.sh                     # -m rdma over tests/test_transport_contract.py and tests/rdma/
#   tests/rdma/vm.sh -k fallback -x      # extra arguments go to pytest (inside the VM)
#
# What it does (Debian 12 host, root; idempotent, a second run reuses what the first one built):
#   1. installs what it needs with apt: qemu-system-x86, busybox-static, kmod, cpio, iproute2, and
#      rdma-core, ibverbs-providers, ibverbs-utils, python3-pyverbs, perftest (the VM runs the host's
#      userspace, so these are the guest's too); runs scripts/setup.sh if the project's venv is missing;
#   2. downloads the stock Debian kernel package (linux-image-<abi>-amd64-unsigned: it ships
#      rdma_rxe.ko), extracts vmlinuz and the few modules needed (rdma, dummy, virtio, 9p, overlay,
#      crypto), and builds a tiny initramfs (static busybox);
#   3. boots it with QEMU (TCG by default; ACCEL=kvm where /dev/kvm works): no disk, the host's root
#      shared READ-ONLY over virtio-9p with a tmpfs overlay on top (writes vanish at power-off), and
#      NO network card (-nic none): the soft-RoCE device sits on a dummy link (10.99.0.1) inside the
#      VM, so nothing leaves it. One writable 9p share, $RDMA_VM_WORK/out, brings the results back;
#   4. inside (tests/rdma/guest.sh, PID 1): loads rdma_rxe, creates rxe0, exposes Debian's pyverbs
#      (and only it) to the project's venv through PYTHONPATH, runs
#      `.venv/bin/python -m pytest -m rdma ...`, then bench/rdma_hw_check.py on rxe0 (RDMA_VM_BENCH=0
#      skips it), writes out/pytest.log, out/junit.xml, out/rc, out/guest.log, and powers off.
#
# Env: RDMA_VM_WORK (default /tmp/modeldist-rdma-vm), ACCEL=tcg|kvm, SMP (default: host cores, <= 4),
#      MEM (default 4G), VM_TIMEOUT (seconds for the VM, default 1080), KPKG (pin the kernel package),
#      RDMA_VM_BENCH=1|0.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=${RDMA_VM_WORK:-/tmp/modeldist-rdma-vm}
OUT=$WORK/out
T0=$(date +%s)
log() { echo "[vm.sh +$(( $(date +%s) - T0 ))s] $*"; }
case "$REPO$WORK" in *[[:space:]]*) echo "vm.sh: paths with spaces are not supported ($REPO, $WORK)" >&2; exit 2;; esac

# --- 1. packages and the venv --------------------------------------------------------------------
PKGS="qemu-system-x86 busybox-static kmod cpio iproute2 rdma-core ibverbs-providers ibverbs-utils python3-pyverbs perftest"
missing=$(dpkg-query -W -f='${Package} ${db:Status-Abbrev}\n' $PKGS 2>/dev/null | awk '$2 != "ii" {print $1}' || true)
for p in $PKGS; do dpkg-query -W "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "${missing// /}" ]; then
  log "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
fi
[ -x "$REPO/.venv/bin/python" ] || bash "$REPO/scripts/setup.sh"
PY=$("$REPO/.venv/bin/python" -c 'import sys; print(sys.executable)')

# --- 2. kernel + initramfs -----------------------------------------------------------------------
mkdir -p "$WORK" "$OUT"
if ! ls "$WORK"/kernel/boot/vmlinuz-* >/dev/null 2>&1; then
  KPKG=${KPKG:-$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')-unsigned}
  log "kernel package $KPKG"
  rm -rf "$WORK/debs" "$WORK/kernel.full" "$WORK/kernel"; mkdir -p "$WORK/debs"
  (cd "$WORK/debs" && apt-get download -qq "$KPKG" 2>/dev/null || apt-get download "$KPKG")
  dpkg -x "$WORK"/debs/*.deb "$WORK/kernel.full"
  V=$(ls "$WORK/kernel.full/lib/modules" | head -1)
  depmod -b "$WORK/kernel.full" "$V"
  K=$WORK/kernel; mkdir -p "$K/boot" "$K/lib/modules/$V"
  cp "$WORK/kernel.full/boot/vmlinuz-$V" "$K/boot/"
  cp "$WORK"/kernel.full/lib/modules/$V/modules.{order,builtin,builtin.modinfo} "$K/lib/modules/$V/"
  for m in rdma_rxe ib_uverbs ib_umad rdma_ucm dummy virtio_pci 9p 9pnet_virtio overlay; do
    modprobe -d "$WORK/kernel.full" -S "$V" --show-depends "$m" | awk '$1=="insmod"{print $2}'
  done | sort -u | while read -r ko; do
    rel=${ko#"$WORK"/kernel.full/}; mkdir -p "$K/$(dirname "$rel")"; cp "$ko" "$K/$rel"
  done
  # rdma_rxe asks for crc32 at run time (request_module): without crypto/ `rdma link add` fails (ENOENT)
  for d in crypto arch/x86/crypto lib; do
    mkdir -p "$K/lib/modules/$V/kernel/$d"; cp -r "$WORK/kernel.full/lib/modules/$V/kernel/$d/." "$K/lib/modules/$V/kernel/$d/"
  done
  depmod -b "$K" "$V"
  rm -rf "$WORK/kernel.full" "$WORK/debs"
fi
V=$(ls "$WORK/kernel/lib/modules" | head -1)
if [ ! -f "$WORK/initramfs.cpio.gz" ] || [ "$0" -nt "$WORK/initramfs.cpio.gz" ]; then
  log "initramfs"
  R=$WORK/initramfs-root; rm -rf "$R"; mkdir -p "$R"/{bin,dev,proc,sys,mnt/lower,mnt/rw,newroot,lib/modules}
  cp /usr/bin/busybox "$R/bin/busybox"
  for a in sh mount umount insmod mkdir switch_root cat sleep poweroff; do ln -sf busybox "$R/bin/$a"; done
  : > "$R/modlist"
  for m in virtio_pci 9pnet_virtio 9p overlay; do
    modprobe -d "$WORK/kernel" -S "$V" --show-depends "$m" | awk '$1=="insmod"{print $2}'
  done | awk '!seen[$0]++' | while read -r ko; do cp "$ko" "$R/lib/modules/"; echo "/lib/modules/$(basename "$ko")" >> "$R/modlist"; done
  cat > "$R/init" <<'EOI'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for ko in $(cat /modlist); do insmod $ko || echo "initramfs: insmod $ko failed"; done
GI=; for x in $(cat /proc/cmdline); do case $x in guest_init=*) GI=${x#guest_init=};; esac; done
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /mnt/lower || { echo "initramfs: 9p mount failed"; poweroff -f; }
mount -t tmpfs -o size=512M tmpfs /mnt/rw; mkdir -p /mnt/rw/upper /mnt/rw/work
mount -t overlay overlay -o lowerdir=/mnt/lower,upperdir=/mnt/rw/upper,workdir=/mnt/rw/work /newroot || { echo "initramfs: overlay failed"; poweroff -f; }
umount /proc /sys; umount /dev 2>/dev/null
exec switch_root /newroot $GI
EOI
  chmod +x "$R/init"
  (cd "$R" && find . | cpio -o -H newc --quiet | gzip -1) > "$WORK/initramfs.cpio.gz"
fi

# --- 3. boot -------------------------------------------------------------------------------------
rm -f "$OUT"/*
printf '%s\n' "$@" > "$OUT/pytest-args"
ACCEL=${ACCEL:-tcg}; MEM=${MEM:-4G}; SMP=${SMP:-$(nproc)}; [ "$SMP" -gt 4 ] && SMP=4
case $ACCEL in kvm) CPU=${CPU:-host};; *) CPU=${CPU:-max};; esac
VM_TIMEOUT=${VM_TIMEOUT:-1080}
log "booting (accel=$ACCEL smp=$SMP mem=$MEM kernel $V; console: $OUT/console.log)"
B0=$(date +%s)
set +e
timeout "$VM_TIMEOUT" qemu-system-x86_64 -name modeldist-rdma -machine q35 -accel "$ACCEL" -cpu "$CPU" -smp "$SMP" \
  -m "$MEM" -nographic -no-reboot -nic none \
  -kernel "$WORK/kernel/boot/vmlinuz-$V" -initrd "$WORK/initramfs.cpio.gz" \
  -append "console=ttyS0 panic=-1 loglevel=3 rw guest_init=$REPO/tests/rdma/guest.sh repo=$REPO out=$OUT work=$WORK py=$PY bench=${RDMA_VM_BENCH:-1}" \
  -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
  -virtfs "local,path=$OUT,mount_tag=out,security_model=none" \
  < /dev/null > "$OUT/console.log" 2>&1
qrc=$?
set -e
log "VM ran $(( $(date +%s) - B0 ))s (qemu rc=$qrc)"

# --- 4. results ----------------------------------------------------------------------------------
[ -f "$OUT/guest.log" ] && grep -E '^=== |^RESULT ' "$OUT/guest.log" | sed 's/^/  guest: /' || true
if [ -f "$OUT/pytest.log" ]; then
  echo "----- pytest (inside the VM), last 40 lines of $OUT/pytest.log"
  tail -40 "$OUT/pytest.log"
fi
[ -f "$OUT/rdma_hw_check.txt" ] && { echo "----- bench/rdma_hw_check.py on rxe0 (soft-RoCE under emulation)"; cat "$OUT/rdma_hw_check.txt"; }
if [ ! -f "$OUT/rc" ]; then
  echo "vm.sh: no result from the VM (qemu rc=$qrc; timeout is $VM_TIMEOUT s); console tail:" >&2
  tail -30 "$OUT/console.log" >&2 || true
  exit 1
fi
rc=$(cat "$OUT/rc")
log "pytest exit status in the VM: $rc (results in $OUT)"
exit "$rc"
