#!/usr/bin/env bash
# Sets up a fresh machine, builds ferry and serves the demo: `ferry serve --demo`, the web UI on a
# sandbox with three projects (as root: a loop-mounted XFS, so moves between projects meet a real
# EXDEV) and an embedded SQLite database. Open the printed URL; it carries the login token.
#   scripts/demo.sh [--listen HOST:PORT]     (default 127.0.0.1:8080)
#   scripts/demo.sh --clean                  unmount and remove the sandbox
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD/demo-sandbox"
if [ "${1:-}" = "--clean" ]; then
  if mountpoint -q "$root/mnt" 2>/dev/null; then umount "$root/mnt"; fi
  for dev in $(losetup -j "$root/fs.img" -O NAME -n 2>/dev/null); do losetup -d "$dev"; done
  rm -rf "$root"; echo "removed $root"; exit 0
fi
scripts/setup.sh
swift build --product ferry && swift build --product ferry-engine
exec .build/debug/ferry serve --demo --demo-directory "$root" "$@"
