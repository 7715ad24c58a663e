#!/usr/bin/env bash
# What sizing the walks by the CPUs a job may use is worth: the pre-flight measurement (a walk
# that moves no data, `ferry copy --dry-run`) of a cold 100,000-file tree, inside a cgroup limited
# to one CPU, with one walker (what ferry now chooses there) and with two (`--jobs 2`: what it
# chose before, from the two CPUs online). Interleaved, caches dropped before each sample.
#
#   sudo Benchmarks/thread-budget.sh [--runs N] [--scratch DIR] [--files N]
#
# Needs root, a cgroup CPU controller (v1 `cpu`, or v2 with `cpu` enabled for children) and at
# least two CPUs online. Prints each sample and the medians' ratio.
set -euo pipefail
runs=5
scratch=".build"
files=100000
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --scratch) scratch="$2"; shift 2 ;;
    --files) files="$2"; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--scratch DIR] [--files N]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 2; }
[ "$(getconf _NPROCESSORS_ONLN)" -ge 2 ] || { echo "needs two CPUs online" >&2; exit 2; }
here="$(cd "$(dirname "$0")/.." && pwd)"
(cd "$here" && swift build -c release --static-swift-stdlib --scratch-path "$scratch" --product ferry >/dev/null \
  && swift build -c release --static-swift-stdlib --scratch-path "$scratch" --product ferry-engine >/dev/null)
case "$scratch" in /*) ;; *) scratch="$here/$scratch" ;; esac
ferry="$scratch/release/ferry"

group=""
. "$here/scripts/lib/loop-xfs.sh"
cleanup() {
  set +e
  loop_xfs_down
  [ -n "$group" ] && rmdir "$group"
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
if [ -f /sys/fs/cgroup/cpu/cpu.cfs_period_us ]; then
  group="/sys/fs/cgroup/cpu/ferry-thread-budget-$$"
  mkdir "$group"
  echo 100000 > "$group/cpu.cfs_period_us"
  echo 100000 > "$group/cpu.cfs_quota_us"
elif grep -qw cpu /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null; then
  group="/sys/fs/cgroup/ferry-thread-budget-$$"
  mkdir "$group"
  echo "100000 100000" > "$group/cpu.max"
else
  echo "no writable cgroup CPU controller" >&2; exit 2
fi

loop_xfs_up ferry-thread-budget 4G
export FERRY_DATABASE_URL="sqlite://$work/tasks.sqlite"
src="$mnt/src"
mkdir -p "$src"
# 100 directories of 4 KiB files.
python3 - "$src" "$files" <<'PY'
import os, sys
root, files = sys.argv[1], int(sys.argv[2])
block = os.urandom(4096)
for i in range(files):
    directory = os.path.join(root, "d%d" % (i % 100))
    if i < 100:
        os.mkdir(directory)
    with open(os.path.join(directory, "f%d" % i), "wb") as f:
        f.write(block)
PY
sync

# In the one-CPU group: ferry ARGS..., its output on standard output.
limited() { sh -c 'echo $$ > "$0/cgroup.procs"; exec "$@"' "$group" "$ferry" "$@"; }
# One cold sample: seconds of the measurement with ARGS....
sample() {
  sync
  echo 3 > /proc/sys/vm/drop_caches
  local start end
  start=$(date +%s.%N)
  limited copy --dry-run "$@" "$src" "$mnt/dst" >/dev/null || { echo "thread-budget: ferry copy --dry-run $* failed" >&2; return 1; }
  end=$(date +%s.%N)
  awk -v s="$start" -v e="$end" 'BEGIN { printf "%.3f\n", e - s }'
}
echo "in the one-CPU cgroup: $(limited copy --dry-run "$src" "$mnt/dst" | grep '^Threads')"
echo "with --jobs 2:         $(limited copy --dry-run --jobs 2 "$src" "$mnt/dst" | grep '^Threads')"
sample >/dev/null  # warm-ups (a sample that fails stops the run: it would time no walk)
sample --jobs 2 >/dev/null
one=(); two=()
for r in $(seq 1 "$runs"); do
  if [ $(( r % 2 )) = 1 ]; then
    a="$(sample)" || exit 1; b="$(sample --jobs 2)" || exit 1
  else
    b="$(sample --jobs 2)" || exit 1; a="$(sample)" || exit 1
  fi
  one+=("$a"); two+=("$b")
  echo "run $r: one walker $a s, two walkers $b s"
done
median() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
m1="$(median "${one[@]}")"
m2="$(median "${two[@]}")"
awk -v a="$m1" -v b="$m2" 'BEGIN { printf "medians: one walker %.3f s, two walkers %.3f s; one / two = %.2fx\n", a, b, a / b }'
