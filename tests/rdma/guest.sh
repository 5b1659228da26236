#!/bin/bash
# PID 1 inside the soft-RoCE VM of tests/rdma/vm.sh (not for use on a host). The root is the host's
# root, read-only over 9p with a tmpfs overlay (writes vanish at power-off); only $out (a writable
# 9p share) reaches the host. Creates rxe0 on a dummy link, runs pytest -m rdma with the project's
# venv, optionally bench/rdma_hw_check.py, writes the results to $out and powers off.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb LANG=C.UTF-8
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts /dev/shm; mount -t devpts devpts /dev/pts; mount -t tmpfs -o size=70% tmpfs /dev/shm
mount -t tmpfs tmpfs /run
ln -sf /proc/self/fd /dev/fd; ln -sf /proc/self/fd/0 /dev/stdin; ln -sf /proc/self/fd/1 /dev/stdout; ln -sf /proc/self/fd/2 /dev/stderr
ARGS=" $(cat /proc/cmdline) "
arg() { local x; for x in $ARGS; do case $x in "$1"=*) echo "${x#*=}"; return;; esac; done; echo "$2"; }
REPO=$(arg repo /); OUT=$(arg out /tmp/out); WORK=$(arg work /tmp); PY=$(arg py python3); BENCH=$(arg bench 1)
mkdir -p "$OUT"; mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 out "$OUT" || echo "WARN: out share not mounted"
exec > >(tee -a "$OUT/guest.log") 2>&1
up() { cut -d' ' -f1 /proc/uptime; }
step() { echo "=== [t=$(up)s] $*"; }
finish() { step "power off"; sync; echo o > /proc/sysrq-trigger; sleep 5; }
step "guest up: kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/{print int($2/1024)}' /proc/meminfo) MiB"

KV=$(uname -r)
mkdir -p /lib/modules && ln -sfn "$WORK/kernel/lib/modules/$KV" "/lib/modules/$KV"
modprobe rdma_rxe && modprobe ib_uverbs && modprobe rdma_ucm && modprobe dummy numdummies=0 || { echo "RESULT modules failed"; echo 1 > "$OUT/rc"; finish; }
ip link set lo up
ip link add dummy0 type dummy && ip addr add 10.99.0.1/24 dev dummy0 && ip link set dummy0 up
rdma link add rxe0 type rxe netdev dummy0 || { echo "RESULT rdma link add failed"; echo 1 > "$OUT/rc"; finish; }
step "rxe0 on dummy0 10.99.0.1 (no network card: nothing leaves this VM)"
rdma link show
ulimit -l unlimited

# Debian's pyverbs, and only it, for the project's venv (the rest of dist-packages would shadow the
# venv's own numpy & co.): a folder holding just a link to the package, on PYTHONPATH (inherited by
# the agents the tests start)
mkdir -p /run/pyverbs-only && ln -s /usr/lib/python3/dist-packages/pyverbs /run/pyverbs-only/pyverbs
export PYTHONPATH=/run/pyverbs-only
mkdir -p /run/tests && mount -t tmpfs -o size=60% tmpfs /run/tests
export TMPDIR=/run/tests
"$PY" -c "import pyverbs, pyverbs.device as d; print('pyverbs', pyverbs.__file__, [x.name.decode() for x in d.get_device_list()])"

cd "$REPO"
mapfile -t EXTRA < <(grep -v '^$' "$OUT/pytest-args" 2>/dev/null)
[ ${#EXTRA[@]} -eq 0 ] && EXTRA=(tests/test_transport_contract.py tests/rdma)
step "pytest -m rdma ${EXTRA[*]}"
t0=$(up)
"$PY" -m pytest -m rdma -p no:cacheprovider -rA --durations=15 --junitxml="$OUT/junit.xml" \
  --basetemp=/run/tests/pytest "${EXTRA[@]}" > "$OUT/pytest.log" 2>&1
rc=$?
echo "$rc" > "$OUT/rc"
step "pytest rc=$rc in $(awk "BEGIN{print $(up) - $t0}") s"
echo "RESULT pytest $rc ($(tail -1 "$OUT/pytest.log"))"

if [ "$BENCH" = 1 ]; then
  step "bench/rdma_hw_check.py on rxe0 (soft-RoCE, emulated CPU: figures for the record, not targets)"
  t0=$(up)
  timeout 240 "$PY" bench/rdma_hw_check.py --device rxe0 --size 32MiB --piece 1MiB --repeat 2 \
    --json "$OUT/rdma_hw_check.json" > "$OUT/rdma_hw_check.txt" 2>&1
  echo "RESULT bench $? in $(awk "BEGIN{print $(up) - $t0}") s"
fi
finish
