#!/usr/bin/python3
"""Checks a kill-trial finding (fixed): refine killed after it has written an iteration's half maps
but before checkpoint.json names them must resume from the previous checkpoint, whole, and end
like an uninterrupted run. (With one fixed name for the half maps it resumed from half maps of one
iteration with the state of the previous one.)

  bench/refine_checkpoint_window.py EXE WORK_DIR

WORK_DIR gets data/ (emcryo simulate), ref/ (uninterrupted) and run/ (killed in that window, then
--continue). Exit 0 when run/ ends like ref/ (the bug is fixed), 1 when it differs.
"""
import os
import signal
import subprocess
import sys
import time

exe, work = os.path.abspath(sys.argv[1]), sys.argv[2]
here = os.path.dirname(os.path.abspath(__file__))
os.makedirs(work, exist_ok=True)
os.chdir(work)
subprocess.run("rm -rf data ref run", shell=True, check=True)
quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
subprocess.run([exe, "-j", "1", "simulate", "--model", os.path.join(here, "..", "data", "1tii.pdb.gz"), "--out", "data",
                "--particles", "300", "--box", "32", "--pixel-size", "4", "--snr", "0.3", "--seed", "4"], check=True, **quiet)
args = ["--particles", "data/particles.star", "--ref", "data/truth_class001.mrc", "--max-iterations", "6"]
subprocess.run([exe, "-j", "1", "refine", *args, "--out", "ref"], check=True, **quiet)
job = subprocess.Popen([exe, "-j", "1", "refine", *args, "--out", "run"], **quiet)
windows, start = 0, time.time()
while job.poll() is None and time.time() - start < 120:
    try:  # a half map newer than the checkpoint: between the maps and the JSON that names them
        json_time = os.stat("run/checkpoint.json").st_mtime_ns
        maps = [f for f in os.listdir("run") if f.startswith("checkpoint_it") and f.endswith("_half1.mrc")]
        inside = any(os.stat(os.path.join("run", f)).st_mtime_ns > json_time for f in maps)
    except FileNotFoundError:
        continue
    windows += inside
    if windows == 2:
        os.kill(job.pid, signal.SIGKILL)
        break
job.wait()
print("killed inside the window" if windows == 2 else "missed the window; run again")
subprocess.run([exe, "-j", "1", "refine", "--continue", "run"], check=True, **quiet)
sys.exit(subprocess.run(["/usr/bin/python3", os.path.join(here, "compare_runs.py"), "ref", "run"]).returncode)
