# Sourced by the benchmark and crash scripts: a loop-mounted XFS (reflink off) in a fresh work
# directory, with project directories, torn down again by loop_xfs_down (call it from your trap).
#   loop_xfs_up PREFIX SIZE      sets $work, $mnt, $loop
#   project_dir DIR PROJECT_ID   mkdir + project ID + inherit flag
#   loop_xfs_down                unmount (lazily if busy), detach, remove the work directory
loop_xfs_up() {
  work="$(mktemp -d "/var/tmp/$1.XXXXXX")"
  mnt="$work/mnt"
  loop=""
  mkdir -p "$mnt"
  truncate -s "$2" "$work/fs.img"
  mkfs.xfs -q -m reflink=0 "$work/fs.img"
  loop="$(losetup --find --show "$work/fs.img")"
  mount -t xfs "$loop" "$mnt"
}

project_dir() {
  mkdir -p "$1"
  xfs_io -c "chproj $2" -c 'chattr +P' "$1" >/dev/null
  # xfs_io has exited 0 for commands that failed: what it set is read back, for a "cross-project"
  # row that is a plain rename measures nothing.
  if ! xfs_io -c lsproj "$1" | grep -qx "projid = $2" || ! xfs_io -c lsattr "$1" | grep -q '^[^ ]*P'; then
    echo "project_dir: $1 did not get project $2 with the inherit flag" >&2
    return 1
  fi
}

# Safe to call twice (from an INT trap, then the EXIT trap): what it undid is forgotten, so a loop
# device someone else took meanwhile is never detached; errexit is as it was afterwards.
loop_xfs_down() {
  local -
  set +e
  # Workers a script left running (interrupted mid-measurement) hold the mount: stopped first.
  local running
  running="$(jobs -p)"
  if [ -n "$running" ]; then kill $running 2>/dev/null; wait $running 2>/dev/null; fi
  if [ -n "${mnt:-}" ] && mountpoint -q "$mnt"; then umount "$mnt" 2>/dev/null || umount -l "$mnt"; fi
  [ -n "${loop:-}" ] && losetup -d "$loop"
  [ -n "${work:-}" ] && rm -rf "$work"
  loop=""
  mnt=""
  work=""
}
