#!/usr/bin/env bash
# Builds ferry and shows it doing what `mv` cannot do safely: a directory crossing project quotas.
# As root: a loop-mounted XFS with two project directories (a real EXDEV); otherwise a plain
# directory sandbox. The sandbox stays under ./demo-sandbox until `scripts/demo.sh --clean`.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/demo-sandbox"
if [ "${1:-}" = "--clean" ]; then
  if mountpoint -q "$root/mnt" 2>/dev/null; then umount "$root/mnt"; fi
  for dev in $(losetup -j "$root/fs.img" -O NAME -n 2>/dev/null); do losetup -d "$dev"; done
  rm -rf "$root"; echo "removed $root"; exit 0
fi
scripts/setup.sh
swift build --product ferry
ferry="$PWD/.build/debug/ferry"
if [ ! -d "$root" ]; then
  mkdir -p "$root"
  if [ "$(id -u)" = 0 ]; then
    truncate -s 2G "$root/fs.img"
    mkfs.xfs -q -m reflink=0 "$root/fs.img"
    mkdir -p "$root/mnt"
    mount -o loop "$root/fs.img" "$root/mnt"
    base="$root/mnt"
  else
    base="$root/dirs"
    mkdir -p "$base"
  fi
  mkdir -p "$base/projects/alpha" "$base/projects/beta"
  if [ "$(id -u)" = 0 ]; then
    xfs_io -c 'chproj 100' -c 'chattr +P' "$base/projects/alpha" >/dev/null
    xfs_io -c 'chproj 200' -c 'chattr +P' "$base/projects/beta" >/dev/null
  fi
  data="$base/projects/alpha/results"
  mkdir -p "$data/runs"
  head -c 64M /dev/urandom > "$data/model.bin"
  truncate -s 1G "$data/sparse.img" && dd if=/dev/urandom of="$data/sparse.img" bs=1M count=4 seek=100 conv=notrunc status=none
  for i in $(seq 1 2000); do echo "run $i" > "$data/runs/run-$i.txt"; done
  ln "$data/model.bin" "$data/model.hardlink"
  ln -s model.bin "$data/current"
fi
base="$root/mnt"; [ -d "$base" ] && mountpoint -q "$base" || base="$root/dirs"
echo "== the source's project:"; "$ferry" fs "$base/projects/alpha"
echo; echo "== rename(2) across projects:"
python3 -c "import os,sys
try: os.rename(sys.argv[1], sys.argv[2]); print('renamed (same project or no project quota here)')
except OSError as e: print('rename failed:', e.strerror, '(errno %d)' % e.errno)" "$base/projects/alpha/results" "$base/projects/beta/results" || true
if [ -e "$base/projects/beta/results" ]; then
  echo; echo "== already copied to $base/projects/beta/results (ferry never replaces data;"
  echo "   run scripts/demo.sh --clean to start over)"
elif [ -d "$base/projects/alpha/results" ]; then
  echo; echo "== ferry copy (staged, verified, durable):"
  "$ferry" copy "$base/projects/alpha/results" "$base/projects/beta/"
  echo; "$ferry" fs "$base/projects/beta/results"
fi
echo; echo "sandbox: $root   (remove with: scripts/demo.sh --clean)"
