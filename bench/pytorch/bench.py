"""PyTorch side of facemark's side-by-side speed benchmark (not run in CI; see README.md).

For each twin (twins.py) it measures, on synthetic data as `facemark bench` does:

* train_synthetic      forward + loss + backward + Adam step, one fixed batch, images/s
* inference_synthetic  eval mode, torch.inference_mode, forward -> points on the host, images/s
* latency              (U-Net nets) one face at a time, median ms over at least --latency-runs

Each measurement runs --warmup untimed steps first, then repeats the step for --seconds. One JSON
line per measurement on stdout; parameter counts and settings go to stderr.

What a step contains, to match facemark's `bench.rs`:

* training: the loss is read back (`loss.item()`, as burn's `into_scalar`), and for the U-Net the
  Gaussian targets are rendered from the batch's points inside every step (facemark renders
  them in `HeatmapNet::loss`); `--targets fixed` renders them once instead.
* inference: the U-Net's per-map softmax and sub-pixel decoding to points, the ResNet's
  coordinates, copied to a host array (facemark's `into_point_lists`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

import twins


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--nets", default="unet112,resnet112,resnet224",
                   help=f"comma-separated subset of {','.join(twins.NETS)} "
                        "(default unet112,resnet112,resnet224)")
    p.add_argument("--benches", default="train,inference,latency",
                   help="comma-separated subset of train,inference,latency")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (default 2)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    p.add_argument("--latency-runs", type=int, default=100,
                   help="minimum batch-1 runs for the latency median (default 100)")
    p.add_argument("--targets", choices=["render", "fixed"], default="render",
                   help="U-Net targets: rendered inside every step like facemark (default), "
                        "or once before timing")
    p.add_argument("--no-shape-prior", action="store_true",
                   help="U-Net without the constant log-prior add (facemark's study recipe has "
                        "none; the best recipe has one)")
    p.add_argument("--adam", choices=["default", "foreach", "fused"], default="default",
                   help="PyTorch's Adam implementation (default: PyTorch's choice on CPU)")
    p.add_argument("--latency-all", action="store_true", help="latency for the ResNets too")
    p.add_argument("--seed", type=int, default=42)
    return p.parse_args(argv)


def measure(seconds: float, warmup: int, batch: int, step):
    """Runs `step` `warmup` times untimed, then repeatedly for about `seconds` (at least once).
    Returns (images, elapsed seconds)."""
    for _ in range(warmup):
        step()
    images = 0
    start = time.perf_counter()
    while True:
        step()
        images += batch
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return images, elapsed


def loadavg() -> float | None:
    """The 1-minute load average (Linux), recorded with each result: a busy machine shows here."""
    try:
        with open("/proc/loadavg") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def synthetic_batch(b: int, side: int, points: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(b, 1, side, side, generator=g) - 0.5  # uniform in [-0.5, 0.5)
    pts = torch.rand(b, points, 2, generator=g)  # fractions of the image, as bench.rs draws them
    return images, pts


def predict_fn(net, kind):
    """Forward -> points as a host (numpy) array, as facemark's inference does."""
    if kind == "heatmap_ce":
        def predict(x):
            return twins.decode_maps(net.heatmaps(x), subpixel=True).numpy()
    else:
        def predict(x):
            out = net(x)
            return out.reshape(out.shape[0], -1, 2).numpy()
    return predict


def main(argv=None) -> int:
    args = parse_args(argv)
    # Before any parallel work: the inter-op pool cannot be resized once used.
    torch.set_num_interop_threads(1)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    benches = {s.strip() for s in args.benches.split(",") if s.strip()}
    for n in nets:
        if n not in twins.NETS:
            sys.exit(f"unknown net {n!r}; choose from {', '.join(twins.NETS)}")
    unknown = benches - {"train", "inference", "latency"}
    if unknown:
        sys.exit(f"unknown bench {sorted(unknown)}")

    common = {
        "framework": "pytorch",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "python": platform.python_version(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
    }
    print(json.dumps({"info": "settings", **common, "batch_size": args.batch_size,
                      "seconds": args.seconds, "warmup": args.warmup, "targets": args.targets,
                      "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
                      "omp_wait_policy_env": os.environ.get("OMP_WAIT_POLICY")}),
          file=sys.stderr)

    def emit(record):
        record["loadavg_1min_after"] = loadavg()
        print(json.dumps(record), flush=True)

    b = args.batch_size
    for name in nets:
        torch.manual_seed(args.seed)
        net, side, lr, kind = twins.build(name, shape_prior=not args.no_shape_prior)
        counts = twins.param_counts(net)
        print(json.dumps({"info": "net", "net": name, "input_size": side, "loss": kind,
                          "lr": lr, **counts}), file=sys.stderr)
        base = {**common, "net": name, "input_size": side,
                "params_trainable": counts["trainable"]}
        if kind == "heatmap_ce":
            base["shape_prior"] = not args.no_shape_prior

        images, pts = synthetic_batch(b, side, 68, args.seed)

        if "train" in benches:
            net.train()
            optim = twins.adam(net.parameters(), lr, args.adam)
            if kind == "heatmap_ce":
                fixed = twins.render_gaussian_targets(pts, side, side)

                def loss_of(x):
                    with torch.no_grad():
                        targets = (fixed if args.targets == "fixed"
                                   else twins.render_gaussian_targets(pts, side, side))
                    return twins.heatmap_cross_entropy(net.logits(x), targets)
            else:
                coord_targets = pts.reshape(b, -1)  # [B, 136], x then y per point

                def loss_of(x):
                    return torch.nn.functional.mse_loss(net(x), coord_targets)

            def train_step():
                optim.zero_grad(set_to_none=True)
                loss = loss_of(images)
                loss.item()  # wait for the value, as facemark's training does
                loss.backward()
                optim.step()

            n, t = measure(args.seconds, args.warmup, b, train_step)
            rec = {"bench": "train_synthetic", **base, "batch_size": b,
                   "images_per_s": n / t, "ms_per_face": 1000.0 * t / n, "images": n, "seconds": t,
                   "lr": lr, "loss": kind, "adam": args.adam}
            if kind == "heatmap_ce":
                rec["targets"] = args.targets
            emit(rec)

        net.eval()
        predict = predict_fn(net, kind)

        if "inference" in benches:
            with torch.inference_mode():
                n, t = measure(args.seconds, args.warmup, b, lambda: predict(images))
            emit({"bench": "inference_synthetic", **base, "batch_size": b,
                  "images_per_s": n / t, "ms_per_face": 1000.0 * t / n, "images": n,
                  "seconds": t})

        if "latency" in benches and (kind == "heatmap_ce" or args.latency_all):
            one = images[:1].contiguous()
            times = []
            with torch.inference_mode():
                for _ in range(args.warmup):
                    predict(one)
                start = time.perf_counter()
                while len(times) < args.latency_runs or time.perf_counter() - start < args.seconds:
                    t0 = time.perf_counter()
                    predict(one)
                    times.append(time.perf_counter() - t0)
            times_ms = sorted(1000.0 * s for s in times)
            q = statistics.quantiles(times_ms, n=10)
            emit({"bench": "latency", **base, "batch_size": 1,
                  "images_per_s": 1000.0 / statistics.median(times_ms),
                  "ms_per_face": statistics.median(times_ms),
                  "p10_ms": q[0], "p90_ms": q[-1], "runs": len(times_ms),
                  "seconds": sum(times)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
