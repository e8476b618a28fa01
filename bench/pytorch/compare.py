"""facemark against its PyTorch twins, back to back in one run, as a markdown ratio table
(not run in CI; see README.md).

For each net it runs, one right after the other on the same machine:

1. `FACEMARK bench --model MODEL --batch-size 16 --size SIDE --seconds S --only ...` (the
   facemark side: training and inference images/s, and with `latency` the shipped model's
   single-face `ms_per_face` with its own test-time settings: crop, forward, decode, mirror
   averaging);
2. `bench.py --nets NET --seconds S` (the PyTorch twin, same batch, shapes and threads).

`--rounds N` repeats the pair N times, alternating which side goes first, and reports each
side's best round (the least disturbed by anything else on the machine) with every round's
figures kept in the JSON lines (`--out`). The load average before and after each measurement is
recorded: the machine has 2 cores and other processes can distort a run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# net name in bench.py -> facemark model and input side
NETS = {
    "unet112": ("heatmap", 112),
    "resnet112": ("ibug68", 112),
    "resnet224": ("ibug68", 224),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--facemark", required=True, help="facemark binary (a release build)")
    p.add_argument("--python", default="/root/venvs/torch/bin/python",
                   help="the PyTorch venv's python (default /root/venvs/torch/bin/python)")
    p.add_argument("--nets", default="unet112,resnet112", help=f"subset of {','.join(NETS)}")
    p.add_argument("--seconds", type=float, default=6.0, help="seconds per measurement")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per net")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", default=os.environ.get("FACEMARK_DATA", "../shared/data"),
                   help="facemark's data folder (latency uses real validation faces)")
    p.add_argument("--out", help="also write every measurement as JSON lines here")
    return p.parse_args(argv)


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def run_lines(cmd: list[str], env: dict) -> list[dict]:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def facemark_side(args, net: str) -> dict:
    model, side = NETS[net]
    benches = "train_synthetic,inference_synthetic" + (",latency" if net == "unet112" else "")
    env = dict(os.environ, CI="1", RAYON_NUM_THREADS=str(args.threads))
    cmd = [args.facemark, "--data", args.data, "bench", "--model", model, "--batch-size", "16",
           "--size", str(side), "--seconds", str(args.seconds), "--only", benches]
    before = loadavg()
    lines = run_lines(cmd, env)
    result = {"side": "facemark", "net": net, "command": " ".join(cmd), "load_before": before,
              "load_after": loadavg()}
    for line in lines:
        if line.get("bench") in ("train_synthetic", "inference_synthetic"):
            result[line["bench"]] = line["images_per_s"]
        if line.get("bench") == "latency":
            result["latency_ms"] = line["ms_per_face"]
            result["latency_mirror_average"] = line["mirror_average"]
    return result


def pytorch_side(args, net: str) -> dict:
    benches = "train,inference" + (",latency" if net == "unet112" else "")
    cmd = [args.python, os.path.join(HERE, "bench.py"), "--nets", net, "--benches", benches,
           "--threads", str(args.threads), "--seconds", str(args.seconds)]
    before = loadavg()
    lines = run_lines(cmd, dict(os.environ))
    result = {"side": "pytorch", "net": net, "command": " ".join(cmd), "load_before": before,
              "load_after": loadavg()}
    for line in lines:
        if line.get("bench") in ("train_synthetic", "inference_synthetic"):
            result[line["bench"]] = line["images_per_s"]
        if line.get("bench") == "latency":
            result["latency_ms"] = line["ms_per_face"]
    return result


def best(rounds: list[dict], key: str, lower_is_better: bool = False):
    values = [r[key] for r in rounds if key in r]
    if not values:
        return None
    return min(values) if lower_is_better else max(values)


def main(argv=None) -> int:
    args = parse_args(argv)
    rows = []
    out = open(args.out, "w") if args.out else None
    for net in args.nets.split(","):
        measured = {"facemark": [], "pytorch": []}
        for r in range(args.rounds):
            order = [facemark_side, pytorch_side] if r % 2 == 0 else [pytorch_side, facemark_side]
            for side in order:
                result = side(args, net)
                result["round"] = r
                measured[result["side"]].append(result)
                print(json.dumps(result), file=sys.stderr)
                if out:
                    out.write(json.dumps(result) + "\n")
                    out.flush()
        fm, pt = measured["facemark"], measured["pytorch"]
        row = {"net": net}
        for key in ("train_synthetic", "inference_synthetic"):
            row[key] = (best(fm, key), best(pt, key))
        row["latency_ms"] = (best(fm, "latency_ms", True), best(pt, "latency_ms", True))
        row["load"] = max(r["load_after"] for r in fm + pt)
        rows.append(row)
    print(f"<!-- {time.strftime('%Y-%m-%d %H:%M')} ; python {' '.join(sys.argv)} -->")
    print("| net (batch 16) | facemark train img/s | PyTorch train img/s | ratio | "
          "facemark infer img/s | PyTorch infer img/s | ratio | max load |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        cells = [row["net"]]
        for key in ("train_synthetic", "inference_synthetic"):
            f, p = row[key]
            cells += [f"{f:.1f}", f"{p:.1f}", f"{f / p:.2f}x"]
        cells.append(f"{row['load']:.2f}")
        print("| " + " | ".join(cells) + " |")
    for row in rows:
        f, p = row["latency_ms"]
        if f is not None and p is not None:
            print(f"\n{row['net']} single face: facemark {f:.1f} ms per face (shipped model, mirror "
                  f"averaged: two images per face), PyTorch twin {p:.1f} ms per forward (batch 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
