#!/usr/bin/env bash
# Kills `ferry move` with SIGKILL at random moments and checks that nothing is ever lost.
#
#   Tests/crash/crash-test.sh [--kills N] [--ferry PATH] [--seed S] [--strategy copy|relink]   (root: loop XFS)
#
# Each round: a tree with a big file, a sparse file, hard links, symlinks and 2,000 small files is
# placed in project 100; `ferry move` to project 200 is started and killed at a random moment
# (anywhere from before the task exists to after it finished); after the lease expires,
# `ferry janitor` recovers. Then, every time:
#   - the tree exists whole (content, sizes, modes, links, symlinks, and each directory's times,
#     compared with a manifest made before) at the destination or, if the move was rolled back, at
#     the source — never neither;
#   - a destination that exists is complete, and after recovery source and destination are not
#     both present;
#   - no .ferry-staging-* directory is left;
#   - the task (if it was created) ended completed or rolled_back, and holds no path lock.
# Each round has a tree (and paths) of its own, so a failure is counted once, in its round.
# With `--strategy relink` the moves rename each file into a recreated skeleton instead of copying
# (as on Lustre 2.15+); their destination is a directory without a project of its own, since XFS
# refuses a file renamed into another inherited project.
# Prints "crash (STRATEGY): N passed, M failed" and exits non-zero on any failure.
set -euo pipefail
kills=30
ferry=""
seed=$RANDOM
strategy=copy
while [ $# -gt 0 ]; do
  case "$1" in
    --kills) kills="$2"; shift 2 ;;
    --ferry) ferry="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --strategy) strategy="$2"; shift 2 ;;
    *) echo "usage: $0 [--kills N] [--ferry PATH] [--seed S] [--strategy copy|relink]" >&2; exit 2 ;;
  esac
done
case "$strategy" in copy|relink) ;; *) echo "crash-test: --strategy takes copy or relink" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "crash-test: needs root (loop XFS)" >&2; exit 2; }
here="$(cd "$(dirname "$0")/../.." && pwd)"
ferry="${ferry:-$here/.build/debug/ferry}"
[ -x "$ferry" ] || { echo "crash-test: no ferry binary at $ferry (swift build first)" >&2; exit 2; }
RANDOM=$seed

. "$here/scripts/lib/loop-xfs.sh"
cleanup() {
  set +e  # nothing may stop the teardown (pkill fails when nothing is left to kill)
  pkill -9 -f "$ferry move" 2>/dev/null
  loop_xfs_down
}
trap cleanup EXIT INT TERM
loop_xfs_up ferry-crash 2G
project_dir "$mnt/a" 100
project_dir "$mnt/b" 200
mkdir "$mnt/c" "$mnt/template"
if [ "$strategy" = relink ]; then to="$mnt/c"; chosen=(--strategy relink); else to="$mnt/b"; chosen=(); fi

# The template tree (its own directory: copies of it are placed in project 100 each round).
t="$mnt/template/data"
mkdir -p "$t/small" "$t/deep/er"
head -c 24M /dev/urandom > "$t/big"
truncate -s 256M "$t/sparse"
dd if=/dev/urandom of="$t/sparse" bs=1M count=2 seek=100 conv=notrunc status=none
ln "$t/big" "$t/deep/er/big-link"
ln -s ../big "$t/deep/relative-link"
ln -s /nowhere "$t/dangling"
python3 - "$t/small" <<'PY'
import os, sys
for i in range(2000):
    with open(os.path.join(sys.argv[1], "f%04d" % i), "w") as f:
        f.write("small file %d\n" % i)
PY
chmod 0750 "$t/deep"
chmod 2770 "$t/small"
touch -h -d "2021-06-07 08:09:10.111213141" "$t/deep/er" "$t/deep" "$t/small" "$t"
manifest() {
  python3 - "$1" <<'PY'
import hashlib, os, stat, sys
root = sys.argv[1]
lines = []
inodes = {}
st = os.lstat(root)
lines.append(". %o mtime=%d" % (st.st_mode, st.st_mtime_ns))
for dirpath, dirnames, filenames in os.walk(root):
    for name in sorted(dirnames + filenames):
        full = os.path.join(dirpath, name)
        rel = os.path.relpath(full, root)
        st = os.lstat(full)
        kind = stat.S_IFMT(st.st_mode)
        extra = ""
        if stat.S_ISREG(kind):
            h = hashlib.sha256()
            with open(full, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            extra = "%d %s sparse=%s" % (st.st_size, h.hexdigest(), st.st_blocks * 512 < st.st_size // 2)
            if st.st_nlink > 1:
                inodes.setdefault(st.st_ino, []).append(rel)
        elif stat.S_ISLNK(kind):
            extra = os.readlink(full)
        elif stat.S_ISDIR(kind):
            extra = "mtime=%d" % st.st_mtime_ns
        lines.append("%s %o %s" % (rel, st.st_mode, extra))
for group in sorted(sorted(g) for g in inodes.values()):
    lines.append("links " + " ".join(group))
print("\n".join(sorted(lines)))
PY
}
expected="$(manifest "$t")"

export FERRY_DATABASE_URL="sqlite://$work/ferry.sqlite"
export FERRY_LEASE_SECONDS=1
# How long an undisturbed move takes, to spread the kills over it.
cp -a "$t" "$mnt/a/data"
start=$(date +%s%N)
"$ferry" move "${chosen[@]}" "$mnt/a/data" "$to/" 2>/dev/null
duration_ms=$(( ($(date +%s%N) - start) / 1000000 + 200 ))
[ "$(manifest "$to/data")" = "$expected" ] || { echo "crash-test: an undisturbed $strategy move did not keep the tree" >&2; exit 1; }
rm -rf "$to/data"
echo "an undisturbed $strategy move takes about ${duration_ms} ms; killing $kills times (seed $seed)"

# After a failure: every task that holds a path lock or has not ended, with its history, read
# from the database itself.
diagnose() {
  python3 - "$work/ferry.sqlite" <<'PY'
import sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
ids = [r[0] for r in db.execute("SELECT DISTINCT task_id FROM path_locks")]
ids += [r[0] for r in db.execute("SELECT id FROM tasks WHERE status NOT IN ('completed','failed','cancelled','rolled_back')") if r[0] not in ids]
for id in ids:
    status, attempts, owner, expires, not_before, code, message = db.execute(
        "SELECT status, attempts, lease_owner, lease_expires_at, not_before, failure_code, failure_message FROM tasks WHERE id = ?", (id,)).fetchone()
    locks = db.execute("SELECT count(*) FROM path_locks WHERE task_id = ?", (id,)).fetchone()[0]
    print("  task %s: %s, %d attempts, %d locks, lease %s until %s, not before %s, error %s %s" % (id, status, attempts, locks, owner, expires, not_before, code, message))
    for at, st, msg in db.execute("SELECT at, status, message FROM task_events WHERE task_id = ? ORDER BY seq", (id,)):
        print("    %.3f %s: %s" % (at, st, msg))
PY
}

passed=0
failed=0
diagnosed=0
for round in $(seq 1 "$kills"); do
  # A tree of its own each round: a task that one round leaves behind (which fails that round)
  # keeps its own paths, and does not make every later round fail on its locks.
  src="$mnt/a/r$round"
  dst="$to/r$round"
  cp -a "$t" "$src"
  sync
  before=$("$ferry" tasks --all --json --limit 100000 | python3 -c "import json,sys; print(len(json.load(sys.stdin)['tasks']))")
  delay_ms=$(( RANDOM % (duration_ms * 2 / 3) ))
  "$ferry" move "${chosen[@]}" "$src" "$to/" >/dev/null 2>&1 &
  pid=$!
  sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  at_kill=$("$ferry" tasks --all --json --limit 100000 | python3 -c "
import json,sys
tasks = json.load(sys.stdin)['tasks']
t = tasks[0] if len(tasks) > $before else None
print(t['status'] if t else 'no task yet')")
  sleep 1.2  # the lease (FERRY_LEASE_SECONDS=1) expires
  janitor_status=0
  "$ferry" janitor --scan "$to" --grace 0 >"$work/janitor.log" 2>&1 || janitor_status=$?

  problems=()
  read -r task_id task_status < <("$ferry" tasks --all --json --limit 100000 | python3 -c "
import json,sys
tasks = json.load(sys.stdin)['tasks']
print(*((tasks[0]['id'], tasks[0]['status']) if len(tasks) > $before else ('-', 'none')))")
  case "$task_status" in
    completed|rolled_back|none) ;;
    *) problems+=("task ended $task_status") ;;
  esac
  locks=$(python3 -c "
import sqlite3, sys
db = sqlite3.connect('file:%s?mode=ro' % sys.argv[1], uri=True)
print(db.execute('SELECT count(*) FROM path_locks WHERE task_id = ?', (sys.argv[2],)).fetchone()[0])" "$work/ferry.sqlite" "$task_id")
  [ "$locks" = 0 ] || problems+=("the task still holds $locks path locks")
  leftovers=$(find "$mnt/a" "$mnt/b" "$mnt/c" -maxdepth 1 -name '.ferry-staging-*' | wc -l)
  [ "$leftovers" = 0 ] || problems+=("$leftovers staging directories left")
  where=""
  if [ -e "$dst" ]; then
    [ "$(manifest "$dst")" = "$expected" ] || problems+=("destination exists but differs from the source")
    where="destination"
    [ -e "$src" ] && problems+=("source and destination both present after recovery")
  elif [ -e "$src" ]; then
    [ "$(manifest "$src")" = "$expected" ] || problems+=("source damaged though the move did not complete")
    where="source"
  else
    problems+=("DATA LOST: neither source nor destination exists")
  fi
  if [ "$task_status" = completed ] && [ "$where" != destination ]; then problems+=("completed but the destination is missing"); fi
  if [ ${#problems[@]} -eq 0 ]; then
    passed=$((passed + 1))
    echo "round $round: killed after ${delay_ms} ms (task $at_kill) -> $task_status, data whole at the $where"
    rm -rf "$src" "$dst"
  else
    failed=$((failed + 1))
    echo "round $round: killed after ${delay_ms} ms (task $at_kill) -> $task_status: FAILED: $(printf '%s; ' "${problems[@]}")"
    "$ferry" tasks --all --json --limit 1 | head -c 2000; echo
    if [ "$diagnosed" -lt 3 ]; then  # the first failures explain themselves
      diagnosed=$((diagnosed + 1))
      echo "  janitor exited $janitor_status:"; sed 's/^/    /' "$work/janitor.log" | head -40
      diagnose
    fi
  fi
done
echo "crash ($strategy): $passed passed, $failed failed"
[ "$failed" = 0 ]
