#!/usr/bin/env bash
# Reconstruction from known poses, emcryo vs RELION 3.1 (relion_reconstruct, CPU), on a simulated
# 20,000-particle set (box 64, 2 Å/px, CTF, SNR 0.1).
#
# Usage: bench/reconstruct_vs_relion.sh [WORKDIR] [PARTICLES]
#   WORKDIR    default /tmp/emcryo_reconstruct_bench (the simulated set is reused when present)
#   PARTICLES  default 20000
# Environment:
#   EMCRYO     emcryo binary (default build/apps/emcryo of this checkout)
#   SKIP_MPI=1 do not run relion_reconstruct_mpi
#   REPEAT     runs per program (default 3); the fastest run's wall time and its peak RSS are
#              reported (the load average before and after is printed, as other work on the
#              machine slows the runs down)
#
# Runs, one after the other, each under /usr/bin/time -v (wall time, peak RSS):
#   emcryo -j 1 reconstruct, emcryo -j 2 reconstruct,
#   relion_reconstruct --ctf (single-threaded; it has no thread option),
#   mpirun -np 2 relion_reconstruct_mpi --ctf (when installed).
# Then prints wall-time ratios and FSCs between the maps and against the true map. RELION zeroes
# its map outside a sphere of radius box/2, so every FSC is taken inside a soft sphere of radius
# box/2 - 4 px (edge 3 px) applied to both maps. emcryo's map is map_unfil.mrc (no FSC weighting,
# like relion_reconstruct without --fsc).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
W=${1:-/tmp/emcryo_reconstruct_bench}
P=${2:-20000}
REPEAT=${REPEAT:-3}
EMCRYO=${EMCRYO:-$root/build/apps/emcryo}
PY=/usr/bin/python3  # Debian's python, with numpy and mrcfile

mkdir -p "$W"
W=$(cd "$W" && pwd)
D=$W/sim

if [[ ! -f $D/particles.star || $(grep -c '@particles.mrcs' "$D/particles.star") -ne $P ]]; then
  rm -rf "$D"
  echo "[$(date '+%F %T')] simulate $P particles"
  "$EMCRYO" simulate --model "$root/data/1tii.pdb.gz" --out "$D" --particles "$P" --box 64 --pixel-size 2.0 \
    --snr 0.1 --seed 11 > "$W/simulate.log" 2>&1
fi

timed() {  # timed NAME CMD...: run CMD under /usr/bin/time -v, log to $W/NAME.log and $W/NAME.time
  local name=$1; shift
  echo "[$(date '+%F %T')] $name: $*" | tee "$W/$name.cmd"
  /usr/bin/time -v -o "$W/$name.time" "$@" > "$W/$name.log" 2>&1
}
wall_s() {  # seconds from a /usr/bin/time -v "Elapsed (wall clock)" line: [h:]mm:ss.ss
  awk -F': ' '/Elapsed \(wall clock\)/ {n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s}' "$1"
}
repeated() {  # repeated NAME CMD...: timed REPEAT times; keeps the fastest run as $W/NAME.{time,log}
  local name=$1; shift
  local best=""
  for k in $(seq 1 "$REPEAT"); do
    timed "$name.$k" "$@" || return 1
    if [[ -z $best ]] || awk -v a="$(wall_s "$W/$name.$k.time")" -v b="$(wall_s "$W/$name.$best.time")" 'BEGIN {exit !(a < b)}'; then
      best=$k
    fi
  done
  cp "$W/$name.$best.time" "$W/$name.time"
  cp "$W/$name.$best.log" "$W/$name.log"
  echo "  $name: runs $(for k in $(seq 1 "$REPEAT"); do printf '%s ' "$(wall_s "$W/$name.$k.time")"; done)s"
}
rss_mib() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$1"; }
cpu_pct() { awk -F': ' '/Percent of CPU this job got/ {print $2}' "$1"; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
rm -rf "$W/emcryo_j1" "$W/emcryo_j2" "$W/relion.mrc" "$W/relion_mpi.mrc"
repeated emcryo_j1 "$EMCRYO" -j 1 reconstruct --particles "$D/particles.star" --out "$W/emcryo_j1"
repeated emcryo_j2 "$EMCRYO" -j 2 reconstruct --particles "$D/particles.star" --out "$W/emcryo_j2"
# RELION resolves rlnImageName relative to the working directory: run it from the data folder.
(cd "$D" && repeated relion relion_reconstruct --i particles.star --o "$W/relion.mrc" --ctf)
have_mpi=0
if [[ -z ${SKIP_MPI:-} ]] && command -v relion_reconstruct_mpi > /dev/null && command -v mpirun > /dev/null; then
  (cd "$D" && repeated relion_mpi mpirun --allow-run-as-root --oversubscribe -np 2 relion_reconstruct_mpi \
    --i particles.star --o "$W/relion_mpi.mrc" --ctf) && have_mpi=1 || echo "relion_reconstruct_mpi failed (see $W/relion_mpi.log)"
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "Reconstruction of $P particles, box 64, 2 Å/px ($(nproc) cores, $(date '+%F'); best of $REPEAT runs;"
echo "load average before: $load_before, after: $load_after)"
printf '%-34s %10s %8s %14s\n' "program" "wall (s)" "CPU" "peak RSS (MiB)"
runs=(emcryo_j1 emcryo_j2 relion)
[[ $have_mpi == 1 ]] && runs+=(relion_mpi)
for r in "${runs[@]}"; do
  printf '%-34s %10.2f %8s %14s\n' "$r" "$(wall_s "$W/$r.time")" "$(cpu_pct "$W/$r.time")" "$(rss_mib "$W/$r.time")"
done
t_j1=$(wall_s "$W/emcryo_j1.time"); t_j2=$(wall_s "$W/emcryo_j2.time"); t_r=$(wall_s "$W/relion.time")
awk -v a="$t_r" -v b="$t_j1" -v c="$t_j2" 'BEGIN {
  printf "relion_reconstruct / emcryo -j 1 : %.2fx\n", a / b
  printf "relion_reconstruct / emcryo -j 2 : %.2fx\n", a / c
  printf "emcryo -j 1 / emcryo -j 2        : %.2fx (thread scaling)\n", b / c }'
if [[ $have_mpi == 1 ]]; then
  t_m=$(wall_s "$W/relion_mpi.time")
  awk -v m="$t_m" -v c="$t_j2" 'BEGIN { printf "relion_reconstruct_mpi -np 2 / emcryo -j 2 : %.2fx\n", m / c }'
fi
grep -h '^resolution' "$W/emcryo_j2.log" | sed 's/^/emcryo half-map FSC: /' || true

echo
maps=("$W/emcryo_j1/map_unfil.mrc" "$W/emcryo_j2/map_unfil.mrc" "$W/relion.mrc")
[[ $have_mpi == 1 ]] && maps+=("$W/relion_mpi.mrc")
$PY - "$D/truth_class001.mrc" "${maps[@]}" <<'EOF'
import sys
import mrcfile
import numpy as np

def load(path):
    with mrcfile.open(path, permissive=True) as m:
        return m.data.astype(np.float64)

truth, maps = load(sys.argv[1]), [(p, load(p)) for p in sys.argv[2:]]
n = truth.shape[0]
c = n // 2
z, y, x = np.indices(truth.shape)
r = np.sqrt((x - c) ** 2 + (y - c) ** 2 + (z - c) ** 2)
R, E = n / 2 - 4, 3
mask = np.where(r <= R, 1.0, np.where(r >= R + E, 0.0, 0.5 * (1 + np.cos(np.pi * (r - R) / E))))
k = np.fft.fftfreq(n) * n
shell = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + np.arange(n // 2 + 1)[None, None, :] ** 2)).astype(int)

def fsc(a, b):
    A, B = np.fft.rfftn(a * mask), np.fft.rfftn(b * mask)
    out = []
    for s in range(n // 2 + 1):
        m = shell == s
        out.append(np.real(np.sum(A[m] * np.conj(B[m]))) / np.sqrt(np.sum(abs(A[m]) ** 2) * np.sum(abs(B[m]) ** 2)))
    return np.array(out)

def res(f, t, pixel=2.0):
    for s in range(1, len(f)):
        if f[s] < t:
            sh = s - 1 + (f[s - 1] - t) / (f[s - 1] - f[s])
            return n * pixel / sh
    return 2 * pixel

def name(p):
    parts = p.split('/')
    return parts[-2] + '/' + parts[-1] if parts[-1] == 'map_unfil.mrc' else parts[-1]

last = n // 3  # 2/3 of Nyquist
print(f"FSC inside a soft sphere of radius {R:.0f} px; min over shells 1..{last} (2/3 Nyquist), mean over 1..{n//2 - 1}")
pairs = [(0, 2)] + ([(2, 3)] if len(maps) > 3 else []) + [(0, 1)]
for i, j in pairs:
    f = fsc(maps[i][1], maps[j][1])
    print(f"  {name(maps[i][0]):24s} vs {name(maps[j][0]):24s}: min {f[1:last + 1].min():.4f}, mean {f[1:n // 2].mean():.4f}")
for p, m in maps:
    f = fsc(m, truth)
    print(f"  {name(p):24s} vs {'truth':24s}: min {f[1:last + 1].min():.4f}, mean {f[1:n // 2].mean():.4f}, "
          f"FSC 0.5 at {res(f, 0.5):.2f} Å")
EOF
