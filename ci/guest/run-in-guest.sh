#!/bin/bash
# run-in-guest.sh - run a command as root inside a throw-away Linux guest whose kernel has
# device-mapper thin provisioning (the host kernel may not), and return its exit status.
#
#   ci/guest/run-in-guest.sh [-C DIR] [-e NAME=VALUE]... [--] COMMAND [ARGS...]
#   ci/guest/run-in-guest.sh --build       (re)build the guest kernel + initramfs only
#
# The guest is Debian's user-mode-linux kernel (a Linux kernel that runs as an ordinary host
# process: no KVM needed, boots in about two seconds). It sees a copy-on-write view of the
# host's root filesystem (read-only host / under a tmpfs overlay), so host-built binaries,
# their libraries and host tools (dmsetup, mkfs.*) run at their host paths; nothing the
# guest writes reaches the host. It gets a fresh /dev (devtmpfs), /proc, /sys, /tmp and /run
# (a stale /run/udev/control without a running udev makes libdevmapper wait forever), and
# DM_DISABLE_UDEV=1. COMMAND runs in DIR (default: the current directory) with PATH, HOME,
# TERM, RUST_BACKTRACE, RUST_LOG and any -e variables passed through; its output (stdout and
# stderr, merged, through the guest console) streams to this script's stdout.
#
# Exit status: COMMAND's, or 125 if the guest died or timed out without reporting one.
#
# Env: GUEST_CACHE  where the kernel, initramfs and per-run job dirs live
#                   (default: <repo>/target/guest)
#      GUEST_MEM    guest RAM (default 2G; the guest's /tmp, a tmpfs of 80% of it, lives in it)
#      GUEST_TIMEOUT seconds before the guest is killed (default 1800)
#      GUEST_DEB    use this user-mode-linux .deb instead of the installed package
# Host packages (Debian 12): user-mode-linux busybox-static kmod (+ whatever COMMAND uses)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CACHE=${GUEST_CACHE:-$REPO/target/guest}
MODULES="dm-thin-pool dm-snapshot loop overlay"   # ext4, xfs and hostfs are built in

die() { echo "run-in-guest: $*" >&2; exit 125; }

# The guest kernel and its modules: the installed user-mode-linux package, or a .deb
# unpacked into the cache (GUEST_DEB, or `apt-get download` when the package is absent).
kernel_tree() {
  if [ -n "${GUEST_DEB:-}" ] || [ ! -x /usr/bin/linux.uml ]; then
    local deb=${GUEST_DEB:-}
    if [ -z "$deb" ]; then
      mkdir -p "$CACHE/deb"
      deb=$(ls "$CACHE"/deb/user-mode-linux_*.deb 2>/dev/null | head -1 || true)
      if [ -z "$deb" ]; then
        (cd "$CACHE/deb" && apt-get download user-mode-linux >&2) ||
          die "cannot get user-mode-linux (apt-get install user-mode-linux)"
        deb=$(ls "$CACHE"/deb/user-mode-linux_*.deb | head -1)
      fi
    fi
    rm -rf "$CACHE/kroot" && mkdir -p "$CACHE/kroot"
    dpkg -x "$deb" "$CACHE/kroot"
    echo "$CACHE/kroot"
  else
    echo ""
  fi
}

build() {
  command -v busybox >/dev/null || [ -x /bin/busybox ] || die "busybox-static is not installed"
  local busybox; busybox=$(command -v busybox || echo /bin/busybox)
  ldd "$busybox" >/dev/null 2>&1 && die "$busybox is dynamically linked; install busybox-static"
  mkdir -p "$CACHE"
  local kroot; kroot=$(kernel_tree)
  local kernel=$kroot/usr/bin/linux.uml moddir=$kroot/usr/lib/uml/modules
  [ -x "$kernel" ] || die "no UML kernel at $kernel"
  local kver; kver=$(ls "$moddir" | head -1)
  [ -n "$kver" ] || die "no UML modules under $moddir"

  local stage="$CACHE/build.$$"
  rm -rf "$stage" && mkdir -p "$stage/modroot/lib" "$stage/root"
  ln -s "$moddir" "$stage/modroot/lib/modules"
  local r=$stage/root
  mkdir -p "$r"/{bin,proc,sys,dev,tmp,run,job,lower,upper,host,lib/modules,etc}
  cp "$busybox" "$r/bin/busybox"
  for applet in $("$busybox" --list); do [ -e "$r/bin/$applet" ] || ln -s busybox "$r/bin/$applet"; done
  # Modules in load order (dependencies first), as modprobe resolves them.
  for m in $MODULES; do modprobe -d "$stage/modroot" -S "$kver" --show-depends "$m"; done |
    awk '$1=="insmod"{print $2}' | awk '!seen[$0]++' |
    while read -r ko; do cp "$ko" "$r/lib/modules/"; basename "$ko"; done > "$r/etc/modules.list"
  [ -s "$r/etc/modules.list" ] || die "could not resolve the guest modules ($MODULES)"
  cat > "$r/init" <<'EOF'
#!/bin/sh
# Guest init: load dm/loop/overlay, build the copy-on-write host root, run the job, report.
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /etc/modules.list); do insmod /lib/modules/$m || echo "guest: insmod $m failed"; done
arg() { sed -n "s/.*guest\.$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
job=$(arg job); nonce=$(arg nonce)
rc=125
if mount -t hostfs none /job -o "$job" &&
   mount -r -t hostfs none /lower -o / &&
   mount -t tmpfs upper /upper && mkdir /upper/u /upper/w &&
   mount -t overlay root -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w /host; then
  mount -t proc proc /host/proc; mount -t sysfs sys /host/sys; mount -t devtmpfs dev /host/dev
  mkdir -p /host/dev/pts /host/dev/shm; mount -t devpts devpts /host/dev/pts; mount -t tmpfs shm /host/dev/shm
  mount -t tmpfs -o size=80% tmp /host/tmp; chmod 1777 /host/tmp
  mount -t tmpfs run /host/run
  mkdir /host/run/guest-job; mount --bind /job /host/run/guest-job
  # The working directory may be under /tmp or /run, which the fresh mounts above hide (CI
  # clones into /tmp): show the host's copy there again, read-only.
  wd=$(arg workdir)
  case "$wd" in /tmp/*|/run/*) mkdir -p "/host$wd" && mount -r -t hostfs none "/host$wd" -o "$wd" ;; esac
  chroot /host /bin/sh /run/guest-job/run.sh; rc=$?
  sync
else
  echo "guest: could not build the host root view"
fi
echo "GUEST-EXIT-$nonce=$rc"
poweroff -f
EOF
  chmod +x "$r/init"
  (cd "$r" && find . | "$busybox" cpio -o -H newc 2>/dev/null) > "$stage/initramfs.cpio"
  cp "$kernel" "$stage/kernel"
  mv -f "$stage/kernel" "$CACHE/kernel"
  mv -f "$stage/initramfs.cpio" "$CACHE/initramfs.cpio"
  stamp > "$CACHE/stamp"
  rm -rf "$stage"
  echo "run-in-guest: built $CACHE/kernel (UML $kver) + initramfs.cpio" >&2
}

# What the built guest depends on: rebuild when the kernel package or this script changes.
stamp() {
  { sha256sum "${BASH_SOURCE[0]}"; dpkg-query -W user-mode-linux 2>/dev/null || true
    echo "${GUEST_DEB:-}"; } | sha256sum | cut -d' ' -f1
}

ensure_built() {
  if [ ! -s "$CACHE/kernel" ] || [ ! -s "$CACHE/initramfs.cpio" ] ||
     [ "$(cat "$CACHE/stamp" 2>/dev/null)" != "$(stamp)" ]; then
    # Concurrent runs: one builds, the others wait for it.
    mkdir -p "$CACHE"
    exec 9>"$CACHE/build.lock"
    flock 9
    if [ ! -s "$CACHE/kernel" ] || [ "$(cat "$CACHE/stamp" 2>/dev/null)" != "$(stamp)" ]; then build; fi
    flock -u 9
  fi
}

if [ "${1:-}" = --build ]; then rm -f "$CACHE/stamp"; ensure_built; exit 0; fi

workdir=$PWD
envs=()
while [ $# -gt 0 ]; do
  case "$1" in
    -C) workdir=$(cd "$2" && pwd); shift 2 ;;
    -e) envs+=("$2"); shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,27p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { sed -n '2,27p' "${BASH_SOURCE[0]}" >&2; exit 2; }

ensure_built
mkdir -p "$CACHE/jobs"
job=$(mktemp -d "$CACHE/jobs/job.XXXXXX")
trap 'rm -rf "$job"' EXIT
nonce=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')

{
  echo 'export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
  echo 'export HOME=/root DM_DISABLE_UDEV=1 GD_IN_GUEST=1'
  for v in TERM RUST_BACKTRACE RUST_LOG RUST_TEST_THREADS CARGO_TERM_COLOR; do
    [ -n "${!v:-}" ] && printf 'export %s=%q\n' "$v" "${!v}"
  done
  for kv in "${envs[@]+"${envs[@]}"}"; do printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"; done
  printf 'cd %q || exit 125\n' "$workdir"
  printf 'exec'; printf ' %q' "$@"; printf ' 2>&1\n'
} > "$job/run.sh"

log="$job/console.log"
# con0 (the console) is the host stdout; stdin is closed so the guest never waits on it.
timeout -k 10 "${GUEST_TIMEOUT:-1800}" "$CACHE/kernel" \
  mem="${GUEST_MEM:-2G}" initrd="$CACHE/initramfs.cpio" umid="gd-guest-$nonce" \
  con=null con0=null,fd:1 console=tty0 quiet loglevel=1 panic=-1 \
  guest.job="$job" guest.nonce="$nonce" guest.workdir="$workdir" </dev/null 2>&1 |
  tr -d '\r' | tee "$log" | grep -av -e "GUEST-EXIT-$nonce=" -e '^reboot: System halted' || true
rc=$(grep -ao "GUEST-EXIT-$nonce=[0-9]*" "$log" | tail -1 | cut -d= -f2 || true)
rm -rf "$HOME/.uml/gd-guest-$nonce" 2>/dev/null || true
[ -n "$rc" ] || die "the guest died or timed out without reporting an exit status"
exit "$rc"
