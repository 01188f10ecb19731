#!/usr/bin/env bash
# Kill-and-resume trials (issue 16), through the CLI only: for each job, one uninterrupted run,
# then N runs killed with SIGKILL at a random moment and resumed with --continue (or started
# again when the kill came before the first checkpoint). Each resumed run must end like the
# uninterrupted one: the same classes and poses in particles.star, maps equal to float tolerance,
# the same output files, and no temporary file left.
#
#   bench/kill_trials.sh [-e EXE] [-j "class2d refine abinitio"] [-s small|tiny] N
#
# -s tiny is for the test suite (seconds per run); small is the benchmark size. Prints one line
# per trial and "kill trials <job>: K/N identical"; exits 1 when any trial differs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
exe="$here/../build/apps/emcryo"
jobs="class2d refine abinitio"
size=small
while getopts "e:j:s:" opt; do
  case $opt in
    e) exe=$(realpath "$OPTARG") ;;
    j) jobs=$OPTARG ;;
    s) size=$OPTARG ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
trials=${1:?usage: kill_trials.sh [-e EXE] [-j JOBS] [-s small|tiny] N}
python=/usr/bin/python3  # Debian's, with python3-numpy and python3-mrcfile
work=$(mktemp -d /tmp/emcryo_kill_XXXXXX)
trap 'rm -rf "$work"' EXIT

if [[ $size == tiny ]]; then
  sim=(--particles 60 --box 24 --pixel-size 6 --snr 0.5)
  class2d_args=(--classes 3 --iterations 3)
  refine_args=(--max-iterations 3)
  abinitio_args=(--iterations 6 --initial-batch 20 --final-batch 30)
else
  sim=(--particles 300 --box 32 --pixel-size 4 --snr 0.3)
  class2d_args=(--classes 6 --iterations 6)
  refine_args=(--max-iterations 6)
  abinitio_args=(--iterations 12 --initial-batch 60 --final-batch 100)
fi
# One thread: the same sums in the same order whatever the moment of the kill.
em=("$exe" -j 1)
"${em[@]}" simulate --model "$here/../data/1tii.pdb.gz" --out "$work/data" "${sim[@]}" --seed 4 >/dev/null 2>&1

command_for() {  # job out
  case $1 in
    class2d) echo "class2d --particles $work/data/particles.star --out $2 ${class2d_args[*]}" ;;
    refine) echo "refine --particles $work/data/particles.star --ref $work/data/truth_class001.mrc --out $2 ${refine_args[*]}" ;;
    abinitio) echo "abinitio --particles $work/data/particles.star --out $2 ${abinitio_args[*]}" ;;
  esac
}

# Sleeps a random time in [5%, 95%] of the reference run's wall time (milliseconds).
random_sleep() {
  local ms=$(( $1 * (5 + RANDOM % 91) / 100 ))
  sleep "$(printf '%d.%03d' $((ms / 1000)) $((ms % 1000)))"
}

failed=0
for job in $jobs; do
  ref="$work/$job-ref"
  start=$(date +%s%N)
  # shellcheck disable=SC2046
  "${em[@]}" $(command_for "$job" "$ref") >"$work/$job-ref.log" 2>&1
  ref_ms=$(( ($(date +%s%N) - start) / 1000000 ))
  identical=0
  for ((t = 1; t <= trials; t++)); do
    out="$work/$job-trial$t"
    # shellcheck disable=SC2046
    "${em[@]}" $(command_for "$job" "$out") >"$out.log" 2>&1 &
    pid=$!
    random_sleep "$ref_ms"
    kill -KILL "$pid" 2>/dev/null && when="killed" || when="finished before the kill"
    wait "$pid" 2>/dev/null || true
    if [[ -f $out/checkpoint.json ]]; then
      "${em[@]}" "$job" --continue "$out" >>"$out.log" 2>&1 || { echo "trial $t: --continue failed"; tail -3 "$out.log"; }
    else  # killed before the first checkpoint: the user starts it again
      # shellcheck disable=SC2046
      "${em[@]}" $(command_for "$job" "$out") >>"$out.log" 2>&1 || { echo "trial $t: restart failed"; tail -3 "$out.log"; }
    fi
    if verdict=$("$python" "$here/compare_runs.py" "$ref" "$out" 2>&1); then
      identical=$((identical + 1))
      echo "$job trial $t ($when): identical"
    else
      echo "$job trial $t ($when): DIFFERENT: $verdict"
      failed=1
    fi
    rm -rf "$out"
  done
  echo "kill trials $job: $identical/$trials identical (uninterrupted run $ref_ms ms)"
done
exit $failed
