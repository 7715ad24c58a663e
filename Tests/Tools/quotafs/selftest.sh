#!/usr/bin/env bash
# Self-test for quotafs: builds it into a temp dir, mounts it with a 1 MiB
# budget and checks passthrough behaviour and the EDQUOT cut-off.
# Needs root (or a user allowed to mount FUSE), /dev/fuse, gcc, pkg-config,
# libfuse3-dev, fuse3 (fusermount3) and attr (setfattr/getfattr).
# python3 is optional (renameat2 and copy_file_range checks).
# Exit status: 0 all passed, 1 some check failed, 77 prerequisites missing.
set -u

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src_c="$here/quotafs.c"
budget=1048576

passed=0
failed=0
pass() { echo "PASS: $1"; passed=$((passed + 1)); }
fail() { echo "FAIL: $1${2:+ ($2)}"; failed=$((failed + 1)); }
skip_all() { echo "SKIP: $1"; exit 77; }

for tool in "${CC:-gcc}" pkg-config fusermount3 setfattr getfattr mountpoint stat dd; do
	command -v "$tool" >/dev/null 2>&1 || skip_all "$tool not found"
done
pkg-config --exists fuse3 || skip_all "pkg-config cannot find fuse3 (apt-get install libfuse3-dev)"
[ -e /dev/fuse ] || skip_all "/dev/fuse missing"
have_python=0
command -v python3 >/dev/null 2>&1 && have_python=1

tmp=$(mktemp -d /tmp/quotafs-selftest.XXXXXX)
bin="$tmp/quotafs"
back="$tmp/backing"
mnt="$tmp/mnt"
src="$tmp/src"
daemon_pid=

cleanup() {
	if mountpoint -q "$mnt" 2>/dev/null; then
		fusermount3 -u "$mnt" 2>/dev/null || fusermount3 -uz "$mnt" 2>/dev/null
	fi
	if [ -n "$daemon_pid" ] && kill -0 "$daemon_pid" 2>/dev/null; then
		kill "$daemon_pid" 2>/dev/null
		wait "$daemon_pid" 2>/dev/null
	fi
	if ! mountpoint -q "$mnt" 2>/dev/null; then
		rm -rf "$tmp"
	else
		echo "WARN: $mnt still mounted; left $tmp in place" >&2
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

finish() {
	echo "quotafs selftest: $passed passed, $failed failed"
	[ "$failed" -eq 0 ]
	exit $?
}

# --- build ------------------------------------------------------------------
# shellcheck disable=SC2046
if "${CC:-gcc}" -Wall -Wextra -Werror -O2 $(pkg-config --cflags fuse3) "$src_c" \
	$(pkg-config --libs fuse3) -o "$bin" 2>"$tmp/build.log"; then
	pass "build (gcc -Wall -Wextra -Werror)"
else
	fail "build" "$(head -c 2000 "$tmp/build.log")"
	finish
fi

# --- mount ------------------------------------------------------------------
mkdir -p "$back" "$mnt"
"$bin" "$back" "$mnt" --budget "$budget" -f 2>"$tmp/quotafs.log" &
daemon_pid=$!
for _ in $(seq 50); do
	mountpoint -q "$mnt" && break
	kill -0 "$daemon_pid" 2>/dev/null || break
	sleep 0.1
done
if mountpoint -q "$mnt"; then
	pass "mount --budget $budget"
else
	fail "mount" "$(head -c 2000 "$tmp/quotafs.log")"
	finish
fi

# --- statfs -----------------------------------------------------------------
if out=$(df "$mnt" 2>&1) && echo "$out" | grep -q quotafs &&
	[ "$(stat -f -c %b "$mnt")" = "$(stat -f -c %b "$back")" ]; then
	pass "statfs (df answers, block count matches backing fs)"
else
	fail "statfs" "$out"
fi

# --- cp -a of a small tree --------------------------------------------------
mkdir -p "$src/sub/deeper"
printf 'hello\n' >"$src/a.txt"
head -c 3000 /dev/urandom >"$src/sub/b.bin"
printf 'deep\n' >"$src/sub/deeper/c.txt"
: >"$src/empty"
ln -s a.txt "$src/link"
ln -s /nonexistent/target "$src/dangling"
ln -s sub "$src/dirlink"
ln "$src/a.txt" "$src/hard"
chmod 640 "$src/a.txt"
chmod 750 "$src/sub"
setfattr -n user.x -v file-value "$src/a.txt"
setfattr -n user.x -v dir-value "$src/sub"
touch -d '2010-01-01 00:00:00.5' "$src/sub/deeper/c.txt"
# bytes that will be charged: regular files, hard links counted once
tree_bytes=$(find "$src" -type f -printf '%i %s\n' | sort -u | awk '{s += $2} END {print s + 0}')
charged=0

if out=$(cp -a "$src" "$mnt/tree" 2>&1); then
	charged=$((charged + tree_bytes))
	pass "cp -a small tree (symlinks, hard link, xattrs) below budget"
else
	fail "cp -a small tree" "$out"
fi
if out=$(diff -r --no-dereference "$src" "$mnt/tree" 2>&1); then
	pass "tree content identical (diff -r --no-dereference)"
else
	fail "tree content" "$out"
fi
if [ "$(readlink "$mnt/tree/link")" = a.txt ] &&
	[ "$(readlink "$mnt/tree/dangling")" = /nonexistent/target ] &&
	[ -L "$mnt/tree/dirlink" ] && [ -f "$mnt/tree/dirlink/b.bin" ]; then
	pass "symlinks preserved (readlink)"
else
	fail "symlinks preserved"
fi
if [ "$(stat -c %i "$mnt/tree/a.txt")" = "$(stat -c %i "$mnt/tree/hard")" ] &&
	[ "$(stat -c %h "$mnt/tree/a.txt")" = 2 ]; then
	pass "hard link preserved (same inode, nlink 2)"
else
	fail "hard link preserved"
fi
if [ "$(getfattr --only-values -n user.x "$mnt/tree/a.txt" 2>/dev/null)" = file-value ] &&
	[ "$(getfattr --only-values -n user.x "$mnt/tree/sub" 2>/dev/null)" = dir-value ] &&
	[ "$(getfattr --only-values -n user.x "$back/tree/a.txt" 2>/dev/null)" = file-value ]; then
	pass "xattrs copied (user.x on file and dir, visible in backing dir)"
else
	fail "xattrs copied"
fi
if [ "$(stat -c %a "$mnt/tree/a.txt")" = 640 ] && [ "$(stat -c %a "$mnt/tree/sub")" = 750 ] &&
	[ "$(stat -c %y "$mnt/tree/sub/deeper/c.txt")" = "$(stat -c %y "$src/sub/deeper/c.txt")" ]; then
	pass "modes and mtimes preserved by cp -a"
else
	fail "modes and mtimes preserved"
fi
if setfattr -x user.x "$mnt/tree/a.txt" 2>/dev/null &&
	! getfattr -n user.x "$mnt/tree/a.txt" >/dev/null 2>&1; then
	pass "removexattr"
else
	fail "removexattr"
fi

# --- rename -----------------------------------------------------------------
if mv "$mnt/tree/a.txt" "$mnt/tree/sub/renamed.txt" &&
	mv "$mnt/tree/sub/deeper" "$mnt/tree/moved-dir" &&
	[ "$(cat "$mnt/tree/sub/renamed.txt")" = hello ] &&
	[ -f "$back/tree/moved-dir/c.txt" ] && [ ! -e "$mnt/tree/a.txt" ]; then
	pass "mv (rename file and directory) within the mount"
else
	fail "mv within the mount"
fi

if [ "$have_python" = 1 ]; then
	if out=$(python3 - "$mnt/tree" <<'EOF' 2>&1
import ctypes, errno, os, sys
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
d = sys.argv[1]
def renameat2(a, b, flags):
    r = libc.renameat2(AT_FDCWD, os.path.join(d, a).encode(), AT_FDCWD,
                       os.path.join(d, b).encode(), ctypes.c_uint(flags))
    return 0 if r == 0 else ctypes.get_errno()
assert renameat2("hard", "empty", 1) == errno.EEXIST, "NOREPLACE onto existing"
assert renameat2("hard", "link", 2) == 0, "EXCHANGE"
assert os.path.islink(os.path.join(d, "hard")), "EXCHANGE swapped"
assert renameat2("hard", "link", 2) == 0, "EXCHANGE back"
assert renameat2("hard", "hard-new", 1 << 7) == errno.EINVAL, "unknown flag"
assert renameat2("hard", "hard-new", 1) == 0, "NOREPLACE onto new name"
assert renameat2("hard-new", "hard", 0) == 0, "plain rename back"
EOF
	); then
		pass "renameat2 NOREPLACE/EXCHANGE honoured, unknown flag EINVAL"
	else
		fail "renameat2 flags" "$out"
	fi
	if out=$(python3 - "$mnt/tree" <<'EOF' 2>&1
import os, sys
d = sys.argv[1]
fi = os.open(os.path.join(d, "sub/b.bin"), os.O_RDONLY)
fo = os.open(os.path.join(d, "cfr.bin"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
n = os.copy_file_range(fi, fo, 1000)
os.close(fi); os.close(fo)
assert n == 1000, n
with open(os.path.join(d, "sub/b.bin"), "rb") as a, open(os.path.join(d, "cfr.bin"), "rb") as b:
    assert a.read(1000) == b.read(), "content"
EOF
	); then
		charged=$((charged + 1000))
		pass "copy_file_range within the mount"
	else
		fail "copy_file_range" "$out"
	fi
else
	echo "SKIP: renameat2 / copy_file_range checks (no python3)"
fi

# --- mkfifo -----------------------------------------------------------------
if mkfifo "$mnt/tree/fifo" && [ "$(stat -c %F "$mnt/tree/fifo")" = fifo ] &&
	[ -p "$back/tree/fifo" ]; then
	pass "mkfifo"
else
	fail "mkfifo"
fi

# --- nanosecond times -------------------------------------------------------
ts='2001-02-03 04:05:06.123456789'
if touch -d "$ts" "$mnt/tree/sub/b.bin" &&
	stat -c %y "$mnt/tree/sub/b.bin" | grep -q '^2001-02-03 04:05:06.123456789' &&
	stat -c %y "$back/tree/sub/b.bin" | grep -q '^2001-02-03 04:05:06.123456789'; then
	pass "touch -d keeps nanoseconds ($(stat -c %y "$mnt/tree/sub/b.bin"))"
else
	fail "touch -d nanoseconds" "$(stat -c %y "$mnt/tree/sub/b.bin" 2>&1)"
fi
if touch -h -d "$ts" "$mnt/tree/dirlink" &&
	stat -c %y "$mnt/tree/dirlink" | grep -q '^2001-02-03 04:05:06.123456789' &&
	! stat -c %y "$mnt/tree/sub" | grep -q '^2001-02-03'; then
	pass "touch -h sets symlink's own time (utimensat AT_SYMLINK_NOFOLLOW)"
else
	fail "touch -h on symlink"
fi

# --- budget -----------------------------------------------------------------
if out=$(dd if=/dev/zero of="$mnt/f" bs=64k count=10 2>&1) &&
	[ "$(stat -c %s "$mnt/f")" = 655360 ]; then
	charged=$((charged + 655360))
	pass "dd bs=64k count=10 (640 KiB) within budget"
else
	fail "dd 640 KiB" "$out"
fi
remaining=$((budget - charged))
out=$(dd if=/dev/zero of="$mnt/g" bs=1M count=1 2>&1)
rc=$?
if [ "$rc" -ne 0 ] && echo "$out" | grep -q 'Disk quota exceeded'; then
	pass "writing another 1 MiB fails: $(echo "$out" | grep 'Disk quota exceeded')"
else
	fail "writing another 1 MiB should fail with EDQUOT" "rc=$rc $out"
fi
if [ "$(stat -c %s "$mnt/g")" = "$remaining" ] && [ "$(stat -c %s "$back/g")" = "$remaining" ]; then
	pass "short write filled exactly the remaining $remaining bytes"
else
	fail "short write size" "got $(stat -c %s "$mnt/g" 2>&1), expected $remaining"
fi
if ! out=$(printf x 2>&1 >>"$mnt/f") && [ "$(stat -c %s "$mnt/f")" = 655360 ]; then
	pass "1-byte append fails once budget is 0"
else
	fail "1-byte append should fail" "$out"
fi
if out=$(mkdir "$mnt/newdir" 2>&1); then
	fail "mkdir should fail once budget is 0"
elif echo "$out" | grep -q 'Disk quota exceeded'; then
	pass "mkdir fails with EDQUOT once budget is 0 (inode quota)"
else
	fail "mkdir error" "$out"
fi
if out=$( (: >"$mnt/newfile") 2>&1); then
	fail "create should fail once budget is 0"
elif echo "$out" | grep -q 'Disk quota exceeded'; then
	pass "create fails with EDQUOT once budget is 0"
else
	fail "create error" "$out"
fi

# --- delete -----------------------------------------------------------------
if out=$(rm -r "$mnt/tree" "$mnt/f" "$mnt/g" 2>&1) &&
	[ -z "$(ls -A "$mnt")" ] && [ -z "$(ls -A "$back")" ]; then
	pass "rm -r works (also with budget exhausted); mount and backing empty"
else
	fail "rm -r" "$out"
fi

# --- unmount ----------------------------------------------------------------
if fusermount3 -u "$mnt" && ! mountpoint -q "$mnt"; then
	pass "fusermount3 -u"
	for _ in $(seq 50); do
		kill -0 "$daemon_pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$daemon_pid" 2>/dev/null; then
		fail "daemon exits after unmount"
	else
		wait "$daemon_pid" 2>/dev/null
		daemon_pid=
	fi
else
	fail "fusermount3 -u"
fi

finish
