#!/usr/bin/env bash
# ferry copy vs `cp -a` + sync vs `rsync -a` + sync, measured side by side in one run on a fresh
# loop-mounted XFS with reflink off (so nobody can cheat with shared extents).
#
#   sudo Benchmarks/copy-bench.sh [--runs N] [--only big|small] [--ferry PATH] [--scratch DIR]
#
# --scratch: the build directory for the release build (default .build).
#
# Scenarios (the foundation issue's): (a) 16 x 256 MiB files, (b) 100,000 x 4 KiB files.
# Every timed run starts with cold caches (sync; drop_caches) and ends durable: cp and rsync are
# followed by `sync`, ferry flushes with syncfs before it publishes. The median of N runs is kept;
# the table prints each tool's time and its ratio to cp -a and to rsync. A discarded warm-up round
# comes first and the tools alternate within each round.
set -euo pipefail

runs=5
only=""
ferry=""
scratch=".build"
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    --ferry) ferry="$2"; shift 2 ;;
    --scratch) scratch="$2"; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--only big|small] [--ferry PATH] [--scratch DIR]" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "needs root (loop devices, mount, drop_caches)" >&2; exit 2; }
here="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$ferry" ]; then
  (cd "$here" && swift build -c release --static-swift-stdlib --scratch-path "$scratch" --product ferry >/dev/null \
    && swift build -c release --static-swift-stdlib --scratch-path "$scratch" --product ferry-engine >/dev/null)
  case "$scratch" in /*) ferry="$scratch/release/ferry" ;; *) ferry="$here/$scratch/release/ferry" ;; esac
fi
for tool in mkfs.xfs rsync losetup; do command -v "$tool" >/dev/null || { echo "missing $tool" >&2; exit 2; }; done

. "$here/scripts/lib/loop-xfs.sh"
trap loop_xfs_down EXIT
trap 'loop_xfs_down; exit 130' INT
trap 'loop_xfs_down; exit 143' TERM
loop_xfs_up ferry-bench 14G
project_dir "$mnt/src" 100
project_dir "$mnt/dst" 200
# A task database of the run's own (it goes with the work directory), not the user's.
export FERRY_DATABASE_URL="sqlite://$work/ferry.sqlite"

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

# time_one SRC COMMAND...: runs the command on cold caches, prints seconds; clears dst after. A
# command that fails, or leaves dst without as many entries as SRC has, stops the benchmark: its
# time would be no copy's.
time_one() {
  local src="$1" start end status=0 want got
  shift
  cold
  start=$(now)
  "$@" >/dev/null || status=$?
  end=$(now)
  want=$(find "$src" | wc -l)
  got=$(find "$mnt/dst/$(basename "$src")" 2>/dev/null | wc -l)
  rm -rf "${mnt:?}/dst/"* "$mnt"/dst/.ferry-staging-* 2>/dev/null || true
  if [ "$status" != 0 ] || [ "$want" != "$got" ]; then
    echo "copy-bench: $* exited $status with $got of $want entries copied" >&2
    return 1
  fi
  echo "$end - $start" | bc -l
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

results=()
# bench NAME SRC: one discarded warm-up round, then N rounds with the tools interleaved, so that
# drift in the storage under the loop device (write-back of the source just created, host caches)
# falls on every tool alike.
bench() {
  local name="$1" src="$2" label round
  local -A samples=([ferry]="" [cp]="" [rsync]="")
  run_tool() {
    case "$1" in
      ferry) time_one "$src" "$ferry" copy "$src" "$mnt/dst/" ;;
      # Durable as ferry's copy is: the destination filesystem flushed (syncfs), no more.
      cp) time_one "$src" sh -c "cp -a '$src' '$mnt/dst/' && sync -f '$mnt/dst'" ;;
      rsync) time_one "$src" sh -c "rsync -a '$src' '$mnt/dst/' && sync -f '$mnt/dst'" ;;
    esac
  }
  local sample
  for label in ferry cp rsync; do run_tool "$label" >/dev/null || exit 1; done
  for round in $(seq "$runs"); do
    for label in ferry cp rsync; do
      sample=$(run_tool "$label") || exit 1
      samples[$label]+="$sample "
    done
  done
  local -A times=()
  for label in ferry cp rsync; do
    times[$label]=$(printf '%s\n' ${samples[$label]} | median)
    echo "  $name $label: ${samples[$label]}-> median ${times[$label]} s" >&2
  done
  results+=("$(printf '| %s | %.2f s | %.2f s | %.2f s | %.2fx | %.2fx |' "$name" \
    "${times[ferry]}" "${times[cp]}" "${times[rsync]}" \
    "$(echo "${times[ferry]} / ${times[cp]}" | bc -l)" "$(echo "${times[ferry]} / ${times[rsync]}" | bc -l)")")
}

if [ "$only" != small ]; then
  echo "creating 16 x 256 MiB ..." >&2
  mkdir "$mnt/src/big"
  for i in $(seq -w 1 16); do head -c 256M /dev/urandom > "$mnt/src/big/f$i"; done
  bench "16 x 256 MiB" "$mnt/src/big"
  rm -rf "$mnt/src/big"
fi
if [ "$only" != big ]; then
  echo "creating 100,000 x 4 KiB ..." >&2
  python3 - "$mnt/src/small" <<'PY'
import os, sys
root = sys.argv[1]
os.makedirs(root)
block = os.urandom(4096)
for d in range(100):
    sub = os.path.join(root, "d%03d" % d)
    os.mkdir(sub)
    for f in range(1000):
        with open(os.path.join(sub, "f%04d" % f), "wb") as out:
            out.write(block)
PY
  bench "100,000 x 4 KiB" "$mnt/src/small"
fi

echo
echo "ferry copy (verify=metadata, jobs=$(( $(nproc) * 2 ))) vs cp -a + sync and rsync -a + sync;"
echo "loop XFS, reflink off, cold caches, median of $runs interleaved rounds after a warm-up; $(nproc) cores, $(uname -r)"
echo
echo "| workload | ferry copy | cp -a + sync | rsync -a + sync | ferry / cp | ferry / rsync |"
echo "|---|---|---|---|---|---|"
printf '%s\n' "${results[@]}"
