#!/usr/bin/python3
"""Mutation soak: feeds mutated real and simulated inputs to `emcryo info` and `emcryo reconstruct`
and counts what must never happen: crashes (a signal), hangs (a timeout) and exit codes other than
0 (accepted) or 1 (a clear one-line error).

  bench/mutation_soak.py --exe build/apps/emcryo --count 10000 [--seed 1] [--first 0] [--keep DIR]

Inputs come from `emcryo simulate` (a RELION 3.1 particles STAR and its stack) and from a RELION
3.0 single-block STAR and an MRC volume derived from them. Each trial mutates one file (bytes
flipped, inserted, deleted, truncated, header words set to extremes, numbers replaced by NaN, Inf,
0, -1 or huge values, lines duplicated or dropped, CRLF, long lines) and runs both commands on it.
Trials are numbered and seeded by number, so --first N --count M reproduces trials N..N+M-1.
Failures are copied to --keep (default: soak_failures/ in the working directory) with the command.
Exit status 0 when every trial ended in 0 or 1 and one line on stderr for the errors.
"""
import argparse
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile

EXTREME_NUMBERS = ["nan", "inf", "-inf", "0", "-1", "1e308", "-1e308", "2147483647", "-2147483648",
                   "9223372036854775807", "1e-320", "0.0", "+", "-", "", "1@", "0@x.mrcs", "''", '"']
EXTREME_WORDS = [0, -1, 1, 2, 3, 4, 6, 12, 101, 2**31 - 1, -2**31, 2**16, 2**20, 1024, 7]


def simulate(exe, folder):
    subprocess.run([exe, "-j", "1", "simulate", "--model", DATA_MODEL, "--out", folder, "--particles", "12",
                    "--box", "16", "--pixel-size", "6", "--snr", "1", "--seed", "3"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def relion30_star(star31):
    """The same particles as one RELION 3.0 loop block (optics values per particle)."""
    lines = star31.splitlines()
    particles = lines[lines.index("data_particles"):]
    labels = [l.split()[0] for l in particles if l.startswith("_rln")]
    rows = [l for l in particles if l and not l.startswith(("_", "loop_", "data_", "#"))]
    out = ["data_", "", "loop_"] + labels + ["_rlnDetectorPixelSize", "_rlnMagnification", "_rlnVoltage"]
    out += [r + " 6.0 10000 300" for r in rows]
    return "\n".join(out) + "\n"


def mutate_text(rng, text):
    lines = text.split("\n")
    kind = rng.randrange(9)
    if kind == 0:  # a number becomes an extreme value
        i = rng.randrange(len(lines))
        words = lines[i].split(" ")
        words[rng.randrange(len(words))] = rng.choice(EXTREME_NUMBERS)
        lines[i] = " ".join(words)
    elif kind == 1:
        i = rng.randrange(len(lines))
        lines.insert(i, lines[rng.randrange(len(lines))])
    elif kind == 2:
        del lines[rng.randrange(len(lines))]
    elif kind == 3:
        return "\r\n".join(lines)
    elif kind == 4:  # a very long line
        lines.insert(rng.randrange(len(lines)), rng.choice(["x", "_rlnX", "1 ", "'"]) * rng.choice([10**3, 10**6]))
    elif kind == 5:  # image names: index 0, beyond the stack, no path, climbing out of the project
        i = rng.randrange(len(lines))
        lines[i] = lines[i].replace("@", rng.choice(["0@", "999999@", "@", "1@../../../../etc/passwd #", "-1@"]), 1)
    elif kind == 6:
        return text[:rng.randrange(len(text) + 1)]
    elif kind == 7:  # a label duplicated or renamed
        labels = [i for i, l in enumerate(lines) if l.startswith("_")]
        i = rng.choice(labels)
        lines[i] = rng.choice([lines[rng.choice(labels)], "_rlnImageName", "_", "_rlnUnknown"])
    else:
        return mutate_bytes(rng, text.encode("latin-1")).decode("latin-1")
    return "\n".join(lines)


def mutate_bytes(rng, data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        kind = rng.randrange(4)
        pos = rng.randrange(len(data) + 1)
        if kind == 0 and data:
            data[min(pos, len(data) - 1)] = rng.randrange(256)
        elif kind == 1:
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 2:
            del data[pos:pos + rng.randint(1, 64)]
        else:
            data = data[:pos]
    return bytes(data)


def mutate_mrc(rng, data):
    data = bytearray(data)
    kind = rng.randrange(4)
    if kind <= 1 and len(data) >= 1024:  # header words: sizes, mode, start, sampling, nsymbt
        for _ in range(rng.randint(1, 3)):
            word = rng.choice([0, 1, 2, 3, 7, 8, 9, 23])
            struct.pack_into("<i", data, 4 * word, rng.choice(EXTREME_WORDS))
    elif kind == 2 and len(data) >= 1024:  # cell and statistics: NaN, Inf, 0, negative
        word = rng.choice([10, 11, 12, 19, 20, 21, 54])
        struct.pack_into("<f", data, 4 * word, rng.choice([float("nan"), float("inf"), 0.0, -1.0, 1e38]))
    else:
        return mutate_bytes(rng, data)
    return bytes(data)


def run(cmd, timeout):
    try:
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout)
        return done.returncode, done.stderr.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        return "timeout", ""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--exe", required=True)
    p.add_argument("--count", type=int, default=10000)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--keep", default="soak_failures")
    args = p.parse_args()
    exe = os.path.abspath(args.exe)
    base = tempfile.mkdtemp(prefix="emcryo_soak_")
    counts = {"accepted": 0, "error": 0, "crash": 0, "hang": 0, "other": 0, "not_one_line": 0}
    try:
        simulate(exe, os.path.join(base, "sim"))
        sources = read_sources(base)
        for trial in range(args.first, args.first + args.count):
            run_trial(exe, base, sources, trial, args, counts)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    runs = 2 * args.count
    print(f"mutation soak: {args.count} inputs ({runs} runs): {counts['accepted']} exit 0, {counts['error']} exit 1 "
          f"({counts['not_one_line']} not one line), {counts['crash']} crashes, {counts['hang']} hangs, "
          f"{counts['other']} other exit codes")
    return 0 if counts["crash"] == counts["hang"] == counts["other"] == counts["not_one_line"] == 0 else 1


def read_sources(base):
    sim = os.path.join(base, "sim")
    star = open(os.path.join(sim, "particles.star"), encoding="latin-1").read()
    stack = open(os.path.join(sim, "particles.mrcs"), "rb").read()
    return {"star31": star, "star30": relion30_star(star), "stack": stack}


def run_trial(exe, base, sources, trial, args, counts):
    rng = random.Random(args.seed * 1_000_003 + trial)
    work = os.path.join(base, f"t{trial}")
    os.makedirs(work)
    star_name = rng.choice(["star31", "star30"])
    star, stack = sources[star_name], sources["stack"]
    target = rng.choice(["star", "star", "stack"])
    if target == "star":
        star = mutate_text(rng, star)
    else:
        stack = mutate_mrc(rng, stack)
    star_path = os.path.join(work, "particles.star")
    with open(star_path, "w", encoding="latin-1", newline="") as f:
        f.write(star)
    with open(os.path.join(work, "particles.mrcs"), "wb") as f:
        f.write(stack)
    mutated = star_path if target == "star" else os.path.join(work, "particles.mrcs")
    commands = [[exe, "-j", "1", "info", mutated],
                [exe, "-j", "1", "reconstruct", "--particles", star_path, "--out", os.path.join(work, "rec")]]
    for cmd in commands:
        code, err = run(cmd, args.timeout)
        verdict = classify(code, err, counts)
        if verdict:
            keep(args.keep, work, trial, cmd, verdict, err)
    shutil.rmtree(work, ignore_errors=True)


def classify(code, err, counts):
    if code == "timeout":
        counts["hang"] += 1
        return "hang"
    if code == 0:
        counts["accepted"] += 1
        return None
    if code == 1:
        counts["error"] += 1
        if err.count("\n") != 1:
            counts["not_one_line"] += 1
            return "not one line"
        return None
    if code < 0:
        counts["crash"] += 1
        return f"signal {-code}"
    counts["other"] += 1
    return f"exit {code}"


def keep(folder, work, trial, cmd, verdict, err):
    dest = os.path.join(folder, f"trial{trial}")
    shutil.copytree(work, dest, dirs_exist_ok=True)
    with open(os.path.join(dest, "what.txt"), "w") as f:
        f.write(f"{verdict}\n{' '.join(cmd)}\n{err}")
    print(f"trial {trial}: {verdict}: {' '.join(cmd)}\n  {err.strip()[:300]}", file=sys.stderr)


DATA_MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "data", "1tii.pdb.gz")

if __name__ == "__main__":
    sys.exit(main())
