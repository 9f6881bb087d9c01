#!/usr/bin/env bash
# Splits a built binary into what ships and what stays behind for backtraces:
#
#   scripts/split-debug.sh BUILT OUT
#
# writes OUT, stripped of its symbols and debug info (what the image and an install carry), and
# OUT.debug, that debug info alone (zlib-compressed), which OUT names in its `.gnu_debuglink`
# section with a CRC. A debugger, perf, valgrind and Rust's own panic backtraces find OUT.debug
# beside OUT, in a `.debug/` directory beside it, or under /usr/lib/debug/ at OUT's directory
# (`/usr/lib/debug/usr/local/bin/tollgate.debug` for `/usr/local/bin/tollgate`); without it a
# backtrace names no functions, and nothing else changes. Needs binutils' objcopy (installed
# wherever Rust links binaries).
set -euo pipefail
[ $# = 2 ] || { echo "usage: $0 BUILT OUT" >&2; exit 2; }
built=$1 out=$2
command -v objcopy >/dev/null || { echo "objcopy is needed: apt-get install binutils" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
objcopy --only-keep-debug --compress-debug-sections=zlib "$built" "$out.debug"
chmod 0644 "$out.debug"
# The link is made from OUT.debug's path, and records its file name and CRC only.
objcopy --strip-all --add-gnu-debuglink="$out.debug" "$built" "$out"
