#!/usr/bin/env bash
# Copies the GPU-relevant binaries of a CUDA build (default build-cuda, built for the device's arch)
# into build-carry/{bin,tests}, stripped, for a GPU machine that cannot build (no PCRE2 headers),
# with other builds' binaries in build-carry/alt. The device takes 64 MiB of carried files, so
# they travel as one build-carry/carry.tar.xz: every binary embeds much the same device code, and
# xz's 64 MiB dictionary finds it across files (main's nine suites and benches: 35 MB as .tar.gz,
# 6 MB as .tar.xz). Carry ["build-carry", ".testdata"], then run scripts/device_run.sh there
# (it unpacks and calls scripts/gpu_check.sh with BIN=build-carry).
set -euo pipefail
SRC=${1:-build-cuda}
rm -rf build-carry && mkdir -p build-carry/bin build-carry/tests
cp "$SRC"/bin/llmq* build-carry/bin/
# MAIN_TESTS replaces the list of this build's suites (MAIN_TESTS=" " packs none).
for t in ${MAIN_TESTS:-test_runner_kernels test_runner_gemv test_runner_attention test_runner_engine test_runner_eval \
         test_gptq_gpu test_awq_gpu test_calibrate_gpu test_pipeline_gpu} ${EXTRA_TESTS:-}; do
  [ -x "$SRC/tests/$t" ] && cp "$SRC/tests/$t" build-carry/tests/
done
# ALT="name=path ...": other builds' binaries (an experiment branch's llmq_runner_bench) for
# STAGE=ab, as build-carry/alt/NAME.
# ALT_DIRS="name ...": the same for builds saved as build-alt/NAME/{llmq_runner_bench,
# llmq_attention_bench,test_runner_*}: they travel as NAME, NAME_attention_bench, NAME_test_*.
# ALT_KINDS picks which of those (default "runner attention test").
kinds=" ${ALT_KINDS:-runner attention test} "
for d in ${ALT_DIRS:-}; do
  for f in build-alt/"$d"/*; do
    b=$(basename "$f")
    case "$b" in
      llmq_runner_bench) [[ $kinds == *" runner "* ]] && ALT="${ALT:-} $d=$f" ;;
      llmq_attention_bench) [[ $kinds == *" attention "* ]] && ALT="${ALT:-} ${d}_attention_bench=$f" ;;
      test_*) [[ $kinds == *" test "* ]] && ALT="${ALT:-} ${d}_$b=$f" ;;
    esac
  done
done
dirs=(bin tests)
if [ -n "${ALT:-}" ]; then
  mkdir -p build-carry/alt
  for a in $ALT; do cp "${a#*=}" "build-carry/alt/${a%%=*}"; done
  dirs+=(alt)
fi
find "${dirs[@]/#/build-carry/}" -type f -exec strip {} +
tar -cf - -C build-carry "${dirs[@]}" | xz -9 -T0 > build-carry/carry.tar.xz
rm -rf "${dirs[@]/#/build-carry/}"
du -sh build-carry
