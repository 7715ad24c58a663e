#!/usr/bin/env bash
# ferry move against mv and rsync, and task claims per second, measured side by side in one run.
#
#   sudo Benchmarks/move-bench.sh [--runs N] [--ferry PATH] [--scratch DIR] [--only same|cross|claims]
#
# --scratch: the build directory for the release build (default .build; keep a separate one, such
# as .build-static, so that debug and release builds do not rebuild each other).
# --only: run one part (1, 2 and 3, or 4 below); the default runs all.
#
# On a fresh loop XFS (reflink off) with project directories 100 and 200:
#   1. same-project move of 1 file and of a 100,000-file tree: ferry move vs mv (both O(1)), each
#      sample 100 moves there and back (FERRY_BENCH_SAME_MOVES), before a task database exists
#      and with one present (then every move reads its lock table);
#   2. cross-project move of 16 x 256 MiB, durable and verified, vs mv (which falls back to copy +
#      delete) + sync and rsync -a --remove-source-files + sync, on cold caches; and, as the
#      floor that no move of these bytes on this disk gets far below, a bare copy of the bytes at
#      the disk's pace (two dd streams with O_DIRECT and 16 MiB blocks, then rm + sync: no
#      metadata, no verification, no page cache);
#   3. cross-project move of 100,000 x 4 KiB, the same way; its floor is the work per inode that
#      every durable move of the tree does: the files made anew from bytes in memory (one writer
#      per core, nothing read from the source, no metadata, no verification) + sync, then the cold
#      source removed (one rm per core) + sync;
#   4. task claims per second by 8 concurrent workers on SQLite and on a throwaway PostgreSQL 15
#      cluster with production durability (fsync on): the 8 sharing one store, as in one
#      `ferry worker --concurrency 8`, and with a store (connection) each, as 8 worker processes.
set -euo pipefail
runs=3
ferry=""
scratch=".build"
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --ferry) ferry="$2"; shift 2 ;;
    --scratch) scratch="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    *) echo "usage: $0 [--runs N] [--ferry PATH] [--scratch DIR] [--only same|cross|claims]" >&2; exit 2 ;;
  esac
done
case "$only" in ""|same|cross|claims) ;; *) echo "--only takes same, cross or claims" >&2; exit 2 ;; esac
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }
[ "$(id -u)" = 0 ] || { echo "needs root" >&2; exit 2; }
here="$(cd "$(dirname "$0")/.." && pwd)"
(cd "$here" && swift build -c release --static-swift-stdlib --scratch-path "$scratch" --product ferry >/dev/null \
  && swift build -c release --static-swift-stdlib --scratch-path "$scratch" --product ferry-engine >/dev/null \
  && swift build -c release --static-swift-stdlib --scratch-path "$scratch" --product ferry-claim-bench >/dev/null)
case "$scratch" in /*) ;; *) scratch="$here/$scratch" ;; esac
claimbench="$scratch/release/ferry-claim-bench"

. "$here/scripts/lib/loop-xfs.sh"
pgdata=""
cleanup() {
  set +e
  [ -n "$pgdata" ] && runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$pgdata" -m immediate stop >/dev/null 2>&1
  loop_xfs_down
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
loop_xfs_up ferry-move-bench 14G
chmod 755 "$work"
# Measured as installed (install(1) copies, as a package would), not straight out of the build
# directory: the linker writes its output through a mapping, and a 100 MB static program whose
# pages came into the page cache that way (or by page faults after eviction) starts ~0.3 ms
# slower than the same bytes written or read through in large pieces (218 against 163 page
# faults a start here). mv and its libraries are installed files too.
if [ -z "$ferry" ]; then
  install -d "$work/bin"
  install -m 755 "$scratch/release/ferry" "$scratch/release/ferry-engine" "$work/bin/"
  ferry="$work/bin/ferry"
fi
project_dir "$mnt/a" 100
project_dir "$mnt/b" 200
export FERRY_DATABASE_URL="sqlite://$work/ferry.sqlite"

cold() { sync; echo 3 > /proc/sys/vm/drop_caches; }
now() { date +%s.%N; }
elapsed() { echo "$2 - $1" | bc -l; }
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mktree() {  # mktree DIR COUNT SIZE: COUNT files of SIZE bytes in 1,000-file directories
  python3 - "$1" "$2" "$3" <<'PY'
import os, sys
root, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
block = os.urandom(size)
for i in range(count):
    d = os.path.join(root, "d%03d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "f%04d" % (i % 1000)), "wb") as f:
        f.write(block)
PY
}
rows=()

# 1. Same project: a rename, whatever the size.
if want same; then
head -c 4096 /dev/urandom > "$mnt/a/one-file"
mktree "$mnt/a/tree" "${FERRY_BENCH_TREE_FILES:-100000}" 16
# Written back before timing: otherwise the fixture's ~100,000 new inodes are still being written
# while the moves run, and every fsync (ferry makes each rename durable, mv does not) waits behind
# them, so the rows would measure the fixture's write-back rather than the move.
sync
moves=$(( ${FERRY_BENCH_SAME_MOVES:-100} / 2 * 2 ))
[ "$moves" -ge 2 ] || { echo "FERRY_BENCH_SAME_MOVES must be at least 2" >&2; exit 2; }
same_project() {  # same_project TOOL ITEM: seconds per move over $moves moves (there and back)
  local tool="$1" item="$2" s e
  s=$(now)
  for _ in $(seq $((moves / 2))); do
    if [ "$tool" = ferry ]; then
      "$ferry" move "$mnt/a/$item" "$mnt/a/$item.moved" 2>/dev/null || return 1
      "$ferry" move "$mnt/a/$item.moved" "$mnt/a/$item" 2>/dev/null || return 1
    else
      mv "$mnt/a/$item" "$mnt/a/$item.moved" || return 1
      mv "$mnt/a/$item.moved" "$mnt/a/$item" || return 1
    fi
  done
  e=$(now)
  # Only a timing of moves that happened counts (a failed move would make every later one fail
  # fast): each exit status above, and where the item is now.
  if [ ! -e "$mnt/a/$item" ] || [ -e "$mnt/a/$item.moved" ]; then
    echo "move-bench: $tool did not move $item there and back" >&2
    return 1
  fi
  echo "($e - $s) / $moves" | bc -l
}
same_project_row() {  # same_project_row ITEM LABEL: the tools interleaved, medians of $runs samples
  local item="$1" label="$2" fs=() ms=() f m
  for _ in $(seq "$runs"); do
    f=$(same_project ferry "$item") || exit 1
    m=$(same_project mv "$item") || exit 1
    fs+=("$f"); ms+=("$m")
  done
  f=$(printf '%s\n' "${fs[@]}" | median); m=$(printf '%s\n' "${ms[@]}" | median)
  rows+=("$(printf '| %s | %.4f s | %.4f s (mv) | — | — | %.2fx | — | — |' "$label" "$f" "$m" "$(echo "$f / $m" | bc -l)")")
}
# Before any task has run there is no task database; afterwards the lock table is read on every
# move (as for anyone who has used ferry): both are measured.
[ ! -e "$work/ferry.sqlite" ] || { echo "a task database exists before the first rows" >&2; exit 1; }
same_project_row one-file "same-project move, 1 file, no task database yet"
same_project_row tree "same-project move, 100,000-file tree, no task database yet"
[ ! -e "$work/ferry.sqlite" ] || { echo "a same-project move created a task database" >&2; exit 1; }
"$ferry" tasks >/dev/null
[ -f "$work/ferry.sqlite" ] || { echo "ferry tasks created no task database" >&2; exit 1; }
same_project_row one-file "same-project move, 1 file, task database present"
same_project_row tree "same-project move, 100,000-file tree, task database present"
rm -rf "$mnt/a/tree" "$mnt/a/one-file"
fi

# 2 and 3. Across projects, durable.
# The bytes of a flat directory of big files copied at the disk's pace, then the source deleted:
# two dd streams (the files alternating between them) with O_DIRECT and 16 MiB blocks, which keeps
# both the read and the write side busy without the page cache. Sizes must be multiples of 4 KiB.
dd_floor() {  # dd_floor SRC DEST_PARENT
  local src="$1" dst="$2/${1##*/}" stream pids=() pid status=0
  mkdir "$dst"
  local files=("$src"/*)
  for stream in 0 1; do
    (
      for ((i = stream; i < ${#files[@]}; i += 2)); do
        dd if="${files[i]}" of="$dst/${files[i]##*/}" bs=16M iflag=direct oflag=direct status=none || exit 1
      done
    ) &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  [ "$status" = 0 ] && rm -rf "$src" && sync -f "$2"
}

# The same for a tree of small files, where the floor is the file system's work per inode rather
# than the bytes: the tree's files made anew at the destination from bytes in memory (no reading of
# the source, no metadata copied, nothing verified), one writer process per core, then sync; then
# the cold source removed by one rm per core over its top-level entries, then sync. Every durable
# move of the tree has to create and remove as many inodes.
files_floor() {  # files_floor SRC DEST_PARENT FILE_SIZE
  local src="$1" dst="$2/${1##*/}" size="$3" workers k pids=() pid status=0
  workers=$(nproc)
  mkdir "$dst"
  for ((k = 0; k < workers; k++)); do
    python3 - "$src" "$dst" "$size" "$k" "$workers" <<'PY' &
import os, sys
src, dst, size, k, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
block = os.urandom(size)
def make(path):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, block)
    os.close(fd)
top = sorted(os.scandir(src), key=lambda e: e.name)
for entry in top[k::workers]:
    if not entry.is_dir(follow_symlinks=False):
        make(os.path.join(dst, entry.name))
        continue
    for root, dirs, files in os.walk(entry.path):
        here = os.path.join(dst, os.path.relpath(root, src))
        os.mkdir(here)
        for name in files:
            make(os.path.join(here, name))
PY
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  [ "$status" = 0 ] || return 1
  sync -f "$dst"
  pids=()
  for ((k = 0; k < workers; k++)); do
    (cd "$src" && ls -A | awk -v k="$k" -v n="$workers" '(NR - 1) % n == k' | xargs -r -d '\n' rm -rf --) &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid" || status=1; done
  [ "$status" = 0 ] && rmdir "$src" && sync -f "$2"
}

cross_project() {  # cross_project NAME FILES FLOOR MAKE...: ferry vs mv+sync vs rsync --remove-source-files+sync [vs a floor]
  local name="$1" expect_files="$2" floor="$3"; shift 3
  local -A samples=([ferry]="" [mv]="" [rsync]="" [floor]="")
  local tools=(ferry mv rsync)
  [ "$floor" = no ] || tools+=(floor)
  for round in $(seq 0 "$runs"); do
    for tool in "${tools[@]}"; do
      rm -rf "$mnt/a/data" "$mnt/b/data"
      "$@" "$mnt/a/data"
      cold
      local s e
      s=$(now)
      case "$tool" in
        ferry) "$ferry" move "$mnt/a/data" "$mnt/b/" 2>/dev/null ;;
        # Durable as ferry's move is: the filesystem flushed (syncfs), no more.
        mv) mv "$mnt/a/data" "$mnt/b/" && sync -f "$mnt/b" ;;
        rsync) rsync -a --remove-source-files "$mnt/a/data" "$mnt/b/" && find "$mnt/a/data" -depth -type d -empty -delete && sync -f "$mnt/b" ;;
        floor) $floor "$mnt/a/data" "$mnt/b" ;;
      esac
      e=$(now)
      # A timing is only kept for a move that happened: everything at the destination, nothing left.
      local moved
      moved=$(find "$mnt/b/data" -type f 2>/dev/null | wc -l)
      if [ "$moved" != "$expect_files" ] || [ -e "$mnt/a/data" ]; then
        echo "move-bench: $tool left $moved of $expect_files files at the destination (source still there: $([ -e "$mnt/a/data" ] && echo yes || echo no))" >&2
        exit 1
      fi
      [ "$round" = 0 ] || samples[$tool]+="$(elapsed "$s" "$e") "   # round 0 is a warm-up
    done
  done
  local f m r d
  f=$(printf '%s\n' ${samples[ferry]} | median); m=$(printf '%s\n' ${samples[mv]} | median); r=$(printf '%s\n' ${samples[rsync]} | median)
  echo "  $name: ferry ${samples[ferry]}| mv ${samples[mv]}| rsync ${samples[rsync]}${samples[floor]:+| floor ${samples[floor]}}" >&2
  if [ "$floor" != no ]; then
    d=$(printf '%s\n' ${samples[floor]} | median)
    rows+=("$(printf '| %s | %.2f s | %.2f s (mv + sync) | %.2f s | %.2f s | %.2fx | %.2fx | %.2fx |' "$name" "$f" "$m" "$r" "$d" \
      "$(echo "$f / $m" | bc -l)" "$(echo "$f / $r" | bc -l)" "$(echo "$f / $d" | bc -l)")")
    local what
    case "$floor" in
      dd_floor) what="the bytes copied by two dd streams with O_DIRECT, the source removed, sync" ;;
      *) what="the files made anew from memory, sync, the cold source removed, sync" ;;
    esac
    floors+=("$(printf '%s: the floor (%s) is %.2fx rsync and %.2fx mv' "$name" "$what" \
      "$(echo "$d / $r" | bc -l)" "$(echo "$d / $m" | bc -l)")")
  else
    rows+=("$(printf '| %s | %.2f s | %.2f s (mv + sync) | %.2f s | — | %.2fx | %.2fx | — |' "$name" "$f" "$m" "$r" \
      "$(echo "$f / $m" | bc -l)" "$(echo "$f / $r" | bc -l)")")
  fi
}
floors=()
big_count=${FERRY_BENCH_BIG_FILES:-16}; big_mb=${FERRY_BENCH_BIG_MB:-256}; small_count=${FERRY_BENCH_SMALL_FILES:-100000}
big() { mkdir -p "$1"; for i in $(seq -w 1 "$big_count"); do head -c "${big_mb}M" /dev/urandom > "$1/f$i"; done; }
small() { mktree "$1" "$small_count" 4096; }
small_floor() { files_floor "$1" "$2" 4096; }
if want cross; then
  cross_project "cross-project move, $big_count x $big_mb MiB" "$big_count" dd_floor big
  cross_project "cross-project move, $small_count x 4 KiB" "$small_count" small_floor small
  rm -rf "$mnt/a/data" "$mnt/b/data"
fi

# 4. Claims per second.
if want claims; then
sqlite_rate=$("$claimbench" --database "sqlite://$work/claims.sqlite" --tasks "${FERRY_BENCH_CLAIMS:-20000}" --workers 8)
pgdata="$work/pg"
mkdir -p "$pgdata" && chown postgres "$pgdata"
runuser -u postgres -- /usr/lib/postgresql/15/bin/initdb -D "$pgdata" -U postgres --auth=trust >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
runuser -u postgres -- /usr/lib/postgresql/15/bin/pg_ctl -D "$pgdata" -o "-p $port -k $pgdata -c listen_addresses=127.0.0.1" -w start >/dev/null </dev/null
runuser -u postgres -- /usr/lib/postgresql/15/bin/createdb -h 127.0.0.1 -p "$port" ferry_bench
pg_rate=$("$claimbench" --database "postgres://postgres@127.0.0.1:$port/ferry_bench" --tasks "${FERRY_BENCH_CLAIMS:-20000}" --workers 8)
runuser -u postgres -- /usr/lib/postgresql/15/bin/createdb -h 127.0.0.1 -p "$port" ferry_bench_separate
pg_separate_rate=$("$claimbench" --database "postgres://postgres@127.0.0.1:$port/ferry_bench_separate" --tasks "${FERRY_BENCH_CLAIMS:-20000}" --workers 8 --separate-stores)
fi

echo
echo "ferry move (release build, SQLite task store) vs mv and rsync; loop XFS, reflink off; medians of $runs"
echo "(cross-project: cold caches, a warm-up round first, tools interleaved); $(nproc) cores, $(uname -r)"
if [ ${#rows[@]} -gt 0 ]; then
echo
echo "| workload | ferry move | mv | rsync --remove-source-files + sync | floor | ferry / mv | ferry / rsync | ferry / floor |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
[ ${#floors[@]} -eq 0 ] || { echo; printf '%s\n' "${floors[@]}"; }
fi
if want claims; then
  echo
  echo "$sqlite_rate"
  echo "$pg_rate"
  echo "$pg_separate_rate"
fi
