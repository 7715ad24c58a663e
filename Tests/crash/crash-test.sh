#!/usr/bin/env bash
# Kills `ferry move` with SIGKILL at random moments and checks that nothing is ever lost.
#
#   Tests/crash/crash-test.sh [--kills N] [--ferry PATH] [--seed S] [--strategy copy|relink]   (root: loop XFS)
#
# Each round: a tree with a big file, a sparse file, hard links, symlinks and 2,000 small files is
# placed in project 100; `ferry move` to project 200 is started and killed at a random moment
# (anywhere from before the task exists to after it finished); every third round waits until the
# task is committing (publishing, then deleting the source) and kills it at a random moment of the
# commit (and, while no kill has landed in a commit, up to 10 rounds more, each aimed). After the lease expires, `ferry janitor` recovers. Then, every time:
#   - the tree exists whole (content, sizes, modes, links, symlinks, and each directory's times,
#     compared with a manifest made before) at the destination or, if the move was rolled back, at
#     the source — never neither;
#   - a destination that exists is complete, and after recovery source and destination are not
#     both present;
#   - no .ferry-staging-* (or other .ferry-*) entry is left;
#   - the task (if it was created) ended completed or rolled_back, holds no path lock, and its
#     status says where the tree is (completed: the destination; rolled back or no task: the source);
#   - a tree at the destination carries the destination's project ID, every entry of it;
#   - `ferry move` itself either finished (exit 0) or was the one killed, and `ferry janitor` exit 0.
# The run fails if no kill landed while a task was committing.
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
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
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
# How long its commit took (from its first "committing" event to its end), to spread the kills
# aimed at the commit over it.
commit_ms=$(python3 - "$work/ferry.sqlite" <<'PY'
import sqlite3, sys
db = sqlite3.connect("file:%s?mode=ro" % sys.argv[1], uri=True)
(task,) = db.execute("SELECT id FROM tasks ORDER BY created_at DESC LIMIT 1").fetchone()
events = db.execute("SELECT at, status FROM task_events WHERE task_id = ? ORDER BY seq", (task,)).fetchall()
start = next(at for at, status in events if status == "committing")
print(max(1, int((events[-1][0] - start) * 1000)))
PY
)
echo "an undisturbed $strategy move takes about ${duration_ms} ms, its commit ${commit_ms} ms; killing $kills times (seed $seed)"

# kill_in_commit BEFORE DELAY PID: waits until the newest task (one made after the first BEFORE
# tasks) is committing, then a further DELAY ms, and kills PID with SIGKILL itself (a commit may
# last only milliseconds); prints "committing" then, or the status the task was at if it ended, or
# got no further than that within 120 s (and kills it then too).
kill_in_commit() {
  python3 - "$work/ferry.sqlite" "$1" "$2" "$3" <<'PY'
import os, signal, sqlite3, sys, time
path, before, delay, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000, int(sys.argv[4])
deadline = time.monotonic() + 120
status = "no task yet"
db = sqlite3.connect("file:%s?mode=ro" % path, uri=True, timeout=1)  # each query sees the latest commit
while time.monotonic() < deadline:
    try:
        row = db.execute("SELECT status FROM tasks ORDER BY created_at DESC LIMIT 1 OFFSET ?", (0,)).fetchone() \
            if db.execute("SELECT count(*) FROM tasks").fetchone()[0] > before else None
    except sqlite3.Error:
        row = None
    if row:
        status = row[0]
        if status == "committing":
            time.sleep(delay)
            break
        if status in ("completed", "failed", "cancelled", "rolled_back"):
            break
    time.sleep(0.001)
try:
    os.kill(pid, signal.SIGKILL)
except ProcessLookupError:
    pass
print(status)
PY
}

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
killed_committing=0
# A relink's commit takes a few milliseconds and an aimed kill may come after it: while none has
# landed in a commit, up to 10 more rounds are run past the count, each aimed.
rounds=$kills
round=0
while [ "$round" -lt "$rounds" ]; do
  round=$((round + 1))
  # A tree of its own each round: a task that one round leaves behind (which fails that round)
  # keeps its own paths, and does not make every later round fail on its locks.
  src="$mnt/a/r$round"
  dst="$to/r$round"
  cp -a "$t" "$src"
  sync
  before=$("$ferry" tasks --all --json --limit 100000 | python3 -c "import json,sys; print(len(json.load(sys.stdin)['tasks']))")
  "$ferry" move "${chosen[@]}" "$src" "$to/" >/dev/null 2>"$work/move.log" &
  pid=$!
  if [ $((round % 3)) = 0 ] || [ "$round" -gt "$kills" ]; then
    # Aimed at the commit: the rename into place, the parent's fsync, the source's removal. The
    # first half of its length: the commit has begun some time before the poll sees it.
    delay_ms=$(( RANDOM % (commit_ms / 2 + 1) ))
    aimed=$(kill_in_commit "$before" "$delay_ms" "$pid")
    when="${delay_ms} ms into the commit (seen $aimed)"
  else
    # Anywhere from before the task exists to after it ended.
    delay_ms=$(( RANDOM * 32768 + RANDOM ))
    delay_ms=$(( delay_ms % (duration_ms * 5 / 4) ))
    sleep "$(printf '%d.%03d' $((delay_ms / 1000)) $((delay_ms % 1000)))"
    when="after ${delay_ms} ms"
  fi
  kill -9 "$pid" 2>/dev/null || true
  move_status=0
  wait "$pid" 2>/dev/null || move_status=$?
  at_kill=$("$ferry" tasks --all --json --limit 100000 | python3 -c "
import json,sys
tasks = json.load(sys.stdin)['tasks']
t = tasks[0] if len(tasks) > $before else None
print(t['status'] if t else 'no task yet')")
  [ "$at_kill" = committing ] && killed_committing=$((killed_committing + 1))
  sleep 1.2  # the lease (FERRY_LEASE_SECONDS=1) expires
  janitor_status=0
  "$ferry" janitor --scan "$to" --grace 0 >"$work/janitor.log" 2>&1 || janitor_status=$?

  problems=()
  # 137: the kill landed; 0: it had finished first. Anything else: the move failed on its own.
  case "$move_status" in
    0|137) ;;
    *) problems+=("ferry move exited $move_status by itself: $(head -c 300 "$work/move.log")") ;;
  esac
  [ "$janitor_status" = 0 ] || problems+=("ferry janitor exited $janitor_status")
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
  leftovers=$(find "$mnt/a" "$mnt/b" "$mnt/c" -maxdepth 1 -name '.ferry-*' | wc -l)
  [ "$leftovers" = 0 ] || problems+=("$leftovers .ferry-* entries (staging, probes) left")
  where=""
  if [ -e "$dst" ]; then
    [ "$(manifest "$dst")" = "$expected" ] || problems+=("destination exists but differs from the source")
    where="destination"
    [ -e "$src" ] && problems+=("source and destination both present after recovery")
    # The copy joined the destination's project; a relink into a directory without a project of
    # its own keeps each file's (its quota moved with it on Lustre).
    if [ "$strategy" = copy ]; then
      # "[ID] PATH" for every entry but the symlinks (which cannot be opened).
      projects=$(xfs_io -r -c 'lsproj -R' "$dst" 2>/dev/null || true)
      listed=$(printf '%s\n' "$projects" | grep -c '^\[' || true)
      strays=$(printf '%s\n' "$projects" | grep '^\[' | grep -cv '^\[200\] ' || true)
      [ "$listed" -gt 2000 ] || problems+=("only $listed entries at the destination had a project to read")
      [ "$strays" = 0 ] || problems+=("$strays entries at the destination not in project 200")
    fi
  elif [ -e "$src" ]; then
    [ "$(manifest "$src")" = "$expected" ] || problems+=("source damaged though the move did not complete")
    where="source"
  else
    problems+=("DATA LOST: neither source nor destination exists")
  fi
  case "$task_status" in
    completed) [ "$where" = destination ] || problems+=("completed but the destination is missing") ;;
    rolled_back|none) [ "$where" = source ] || problems+=("task $task_status but the tree is at the $where") ;;
  esac
  if [ ${#problems[@]} -eq 0 ]; then
    passed=$((passed + 1))
    echo "round $round: killed $when (task $at_kill) -> $task_status, data whole at the $where"
    rm -rf "$src" "$dst"
  else
    failed=$((failed + 1))
    echo "round $round: killed $when (task $at_kill) -> $task_status: FAILED: $(printf '%s; ' "${problems[@]}")"
    "$ferry" tasks --all --json --limit 1 | head -c 2000; echo
    if [ "$diagnosed" -lt 3 ]; then  # the first failures explain themselves
      diagnosed=$((diagnosed + 1))
      echo "  janitor exited $janitor_status:"; sed 's/^/    /' "$work/janitor.log" | head -40
      diagnose
    fi
  fi
  if [ "$round" = "$rounds" ] && [ "$killed_committing" = 0 ] && [ "$rounds" -lt $((kills + 10)) ]; then
    rounds=$((rounds + 1))
  fi
done
if [ "$killed_committing" = 0 ]; then
  echo "crash-test: no kill landed while a task was committing (the commit was never tested)" >&2
  failed=$((failed + 1))
fi
echo "crash ($strategy): $passed passed, $failed failed ($killed_committing kills while committing)"
[ "$failed" = 0 ]
