#!/usr/bin/env bash
# On the GPU machine, from the checkout's root: unpacks what scripts/pack_carry.sh packed
# (carry ["build-carry", ".testdata"]), links the paths the tests were built with (their
# LLMQ_SOURCE_DIR / LLMQ_BINARY_DIR: SRC, default /work/main, and SRC/build-cuda), then runs
# scripts/gpu_check.sh for each of STAGES (default "tests") with logs in $OUT/STAGE. Other
# gpu_check.sh knobs (FORMATS, VARIANTS, METHODS, ...) pass through the environment.
set -u
# xz may be missing there; Python's lzma reads the archive too.
tar -xJf build-carry/carry.tar.xz -C build-carry 2>/dev/null ||
  python3 -c 'import tarfile; tarfile.open("build-carry/carry.tar.xz").extractall("build-carry")'
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
SRC=${SRC:-/work/main}
# The checkout may itself sit at SRC, where build-cuda (ignored, not carried) is absent.
mkdir -p "$SRC"
for p in build-cuda:build-carry .testdata:.testdata; do
  link=$SRC/${p%%:*} target=$PWD/${p#*:}
  [ "$link" = "$target" ] && continue                        # the checkout's own .testdata
  if [ -L "$link" ] || [ ! -e "$link" ]; then ln -sfn "$target" "$link"
  else echo "warning: $link is a directory of its own, not linked to $target"; fi
done
echo "checkout $(pwd -P); tests' binary dir $SRC/build-cuda -> $(readlink -f "$SRC/build-cuda")"
for stage in ${STAGES:-tests}; do
  echo "=== $stage"
  STAGE=$stage BIN=build-carry OUT=${OUT:-out/gpu}/$stage scripts/gpu_check.sh
done
# The suites' one-line results again, last, where the returned tail of the output keeps them.
for f in "${OUT:-out/gpu}"/*/summary.txt; do [ -f "$f" ] && { echo "=== summary"; cat "$f"; }; done
