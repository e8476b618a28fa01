"""dlib's HOG frontal face detector against facemark's own detector, on the same photos, back to back
(not run in CI; see README.md).

For each dlib XML label file given, in this order:

1. dlib-hog: `dlib.get_frontal_face_detector()` on every photo the XML names (grey, as loaded by
   PIL), upsampled `--upsample` times (default 1: dlib's 80x80 window then finds faces of about
   40 px and up), timing the detector call alone per photo.
2. facemark: `FACEMARK detect --labels FILE [--min-face PX]` with CI=1 and RAYON_NUM_THREADS set to
   each of `--threads` (default 2), whose one JSON object is recorded as is.

Then, if `--photos` names whole photos (no labels: a photo's time is what matters), each photo is
timed `--repeat` times (default 5) and its median kept, by:

1. dlib-hog on the photo scaled (PIL, bilinear, not timed) so its longest side is at most
   `--max-side` (default 1024: the copy facemark scans, and the issue's measure), then on the photo
   as it is;
2. facemark: one `FACEMARK detect PHOTO PHOTO ...` (each photo `--repeat` times) per thread count,
   its `detection_ms` per call (facemark scales the photo inside that time).

Both sides match their boxes to the annotated ones the same way as facemark's
`study::detector_recall`: greedily by IoU (highest first, each detection used once), a match needs
IoU >= 0.3; `median_*` is the element at index n // 2 of the sorted values (the upper median for
an even count, as facemark's `median`); median_iou is null when nothing matched.

Prints one markdown table row per detector (and the JSON rows on stderr as they come); `--out`
writes them as JSON lines. Every row records the load average (1, 5, 15 min) just before and just
after its measurement: the machine has 2 cores and others may be using it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import dlib
import numpy as np
from PIL import Image, ImageOps

MATCH_IOU = np.float32(0.3)
DEFAULT_FACEMARK = "/root/facemark-detect-bin"
FIELDS = ["count", "detected", "missed", "recall", "match_iou", "unmatched_detections", "photos",
          "median_detection_ms", "median_iou"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("labels", nargs="*", help="dlib XML label file(s); image paths are relative to "
                                             "the XML's folder")
    p.add_argument("--photos", nargs="+", default=[], help="whole photos, timed per photo")
    p.add_argument("--repeat", type=int, default=5,
                   help="--photos: times each photo is detected (the median is kept; default 5)")
    p.add_argument("--max-side", type=int, default=1024,
                   help="--photos: dlib also runs on a copy at most this long (default 1024)")
    p.add_argument("--threads", default="2",
                   help="facemark: RAYON_NUM_THREADS values, comma-separated (default 2)")
    p.add_argument("--upsample", type=int, choices=[0, 1], default=1,
                   help="dlib: times the photo is upsampled before scanning (default 1)")
    p.add_argument("--facemark", default=DEFAULT_FACEMARK,
                   help=f"facemark binary (default {DEFAULT_FACEMARK})")
    p.add_argument("--min-face", type=int, default=None,
                   help="facemark: --min-face PX (default: facemark's own, 40)")
    p.add_argument("--skip-facemark", action="store_true", help="dlib only")
    p.add_argument("--skip-dlib", action="store_true", help="facemark only")
    p.add_argument("--out", help="also write the rows as JSON lines to this file")
    return p.parse_args(argv)


def read_labels(path: str):
    """[(image path, [(left, top, width, height), ...])] from a dlib XML; like facemark's reader,
    boxes marked ignore='1' are dropped and images without boxes are kept (they count 0 faces)."""
    base = os.path.dirname(os.path.abspath(path))
    images = []
    for image in ET.parse(path).getroot().iter("image"):
        boxes = []
        for b in image.findall("box"):
            if b.get("ignore", "0").strip() == "1":
                continue
            boxes.append(tuple(np.float32(b.get(k)) for k in ("left", "top", "width", "height")))
        images.append((os.path.join(base, image.get("file")), boxes))
    return images


def load_gray(path: str) -> np.ndarray:
    """The photo as 8-bit grey, EXIF orientation applied (facemark applies it too)."""
    with Image.open(path) as img:
        return np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(img).convert("L")))


def iou(a, b) -> np.float32:
    """Intersection over union of (left, top, width, height) boxes, in f32 as facemark's."""
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[0] + a[2], b[0] + b[2]), min(a[1] + a[3], b[1] + b[3])
    inter = max(x1 - x0, np.float32(0)) * max(y1 - y0, np.float32(0))
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else np.float32(0)


def match_detections(annotated, detected, min_iou=MATCH_IOU):
    """Per annotated box, the index of its detection or None (facemark's `match_detections`)."""
    pairs = [(iou(a, d), i, j) for i, a in enumerate(annotated) for j, d in enumerate(detected)]
    pairs = [p for p in pairs if p[0] >= min_iou]
    pairs.sort(key=lambda p: -p[0])  # stable, as Rust's sort_by
    matched, taken = [None] * len(annotated), [False] * len(detected)
    for _, i, j in pairs:
        if matched[i] is None and not taken[j]:
            matched[i], taken[j] = j, True
    return matched


def median(values):
    """facemark's median: the element at n // 2 of the sorted values; None (null) when empty."""
    values = sorted(values)
    return float(values[len(values) // 2]) if values else None


def loadavg():
    return [round(v, 2) for v in os.getloadavg()]


def run_dlib(labels: str, upsample: int) -> dict:
    images = read_labels(labels)
    detector = dlib.get_frontal_face_detector()
    count = detected = unmatched = 0
    times, ious = [], []
    before = loadavg()
    for path, annotated in images:
        gray = load_gray(path)
        started = time.perf_counter()
        rects = detector(gray, upsample)
        times.append((time.perf_counter() - started) * 1e3)
        # dlib rectangles are inclusive: width = right - left + 1, as dlib writes them to XML.
        found = [(np.float32(r.left()), np.float32(r.top()), np.float32(r.width()),
                  np.float32(r.height())) for r in rects]
        matched = match_detections(annotated, found)
        count += len(annotated)
        for a, m in zip(annotated, matched):
            if m is not None:
                detected += 1
                ious.append(float(iou(a, found[m])))
        unmatched += len(found) - sum(m is not None for m in matched)
    row = {
        "detector": "dlib-hog",
        "labels": os.path.abspath(labels),
        "count": count,
        "detected": detected,
        "missed": count - detected,
        "recall": detected / max(count, 1),
        "match_iou": 0.3,
        "unmatched_detections": unmatched,
        "photos": len(images),
        "median_detection_ms": median(times),
        "median_iou": median(ious),
        "upsample": upsample,
        "threads": 1,  # dlib's HOG detector scans on one thread
        "mean_detection_ms": sum(times) / len(times) if times else None,
        "total_detection_ms": sum(times),
        "load_average_before": before,
        "load_average_after": loadavg(),
        "dlib_version": dlib.__version__,
        "python": platform.python_version(),
    }
    if len(images) <= 20:
        row["per_photo_ms"] = [round(t, 2) for t in times]
    return row


def run_facemark(labels: str, binary: str, min_face: int | None, threads: int) -> dict:
    cmd = [binary, "detect", "--labels", os.path.abspath(labels)]
    if min_face is not None:
        cmd += ["--min-face", str(min_face)]
    env = dict(os.environ, CI="1", RAYON_NUM_THREADS=str(threads))
    before = loadavg()
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = loadavg()
    if proc.returncode != 0:
        sys.exit(f"facemark failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr}")
    result = None
    for line in reversed(proc.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            result = json.loads(line)
            break
    if result is None:
        sys.exit(f"facemark printed no JSON object: {shlex.join(cmd)}\n{proc.stdout}")
    return {
        "detector": "facemark",
        "labels": os.path.abspath(labels),
        **{k: result.get(k) for k in FIELDS},
        "min_face": min_face if min_face is not None else 40,
        "threads": threads,  # rayon's pool, RAYON_NUM_THREADS
        "process_wall_s": round(wall, 3),  # the whole run: start-up, model, decoding, detection
        "load_average_before": before,
        "load_average_after": after,
        "command": f"CI=1 RAYON_NUM_THREADS={threads} " + shlex.join(cmd),
        "facemark_json": result,
    }


def scaled_copy(gray: np.ndarray, max_side: int) -> np.ndarray:
    """The photo scaled (bilinear) so its longest side is at most max_side."""
    h, w = gray.shape
    scale = max_side / max(w, h)
    if scale >= 1:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(gray).resize(size, Image.BILINEAR))


def run_dlib_photos(photos, upsample: int, repeat: int, max_side: int | None) -> dict:
    """dlib on each photo (scaled to max_side, or as it is for None), repeat times; the median."""
    detector = dlib.get_frontal_face_detector()
    per_photo = []
    before = loadavg()
    for path in photos:
        gray = load_gray(path)
        size = f"{gray.shape[1]}x{gray.shape[0]}"
        if max_side is not None:
            gray = scaled_copy(gray, max_side)
        times, faces = [], None
        for _ in range(repeat):
            started = time.perf_counter()
            rects = detector(gray, upsample)
            times.append((time.perf_counter() - started) * 1e3)
            faces = len(rects)
        per_photo.append({"photo": os.path.basename(path), "size": size,
                          "scanned": f"{gray.shape[1]}x{gray.shape[0]}",
                          "faces": faces, "median_ms": median(times),
                          "ms": [round(t, 2) for t in times]})
    return {
        "detector": "dlib-hog",
        "labels": "photos",
        "setting": f"upsample {upsample}, " + (f"photo at most {max_side} px" if max_side
                                               else "photo as it is"),
        "upsample": upsample,
        "max_side": max_side,
        "threads": 1,
        "photos": len(photos),
        "faces": sum(p["faces"] for p in per_photo),
        "median_detection_ms": median([p["median_ms"] for p in per_photo]),
        "per_photo": per_photo,
        "repeat": repeat,
        "load_average_before": before,
        "load_average_after": loadavg(),
        "dlib_version": dlib.__version__,
    }


def run_facemark_photos(photos, binary: str, min_face: int | None, threads: int,
                        repeat: int) -> dict:
    """One `facemark detect` call over every photo, each repeat times; the median per photo."""
    cmd = [binary, "detect"] + [os.path.abspath(p) for p in photos for _ in range(repeat)]
    if min_face is not None:
        cmd += ["--min-face", str(min_face)]
    env = dict(os.environ, CI="1", RAYON_NUM_THREADS=str(threads))
    before = loadavg()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    after = loadavg()
    if proc.returncode != 0:
        sys.exit(f"facemark failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr}")
    found = json.loads(proc.stdout)
    per_photo = []
    for i, path in enumerate(photos):
        runs = found[i * repeat:(i + 1) * repeat]
        times = [r["detection_ms"] for r in runs]
        per_photo.append({"photo": os.path.basename(path), "faces": len(runs[-1]["faces"]),
                          "median_ms": median(times), "ms": [round(t, 2) for t in times]})
    return {
        "detector": "facemark",
        "labels": "photos",
        "setting": f"--min-face {min_face if min_face is not None else 40}",
        "min_face": min_face if min_face is not None else 40,
        "threads": threads,
        "photos": len(photos),
        "faces": sum(p["faces"] for p in per_photo),
        "median_detection_ms": median([p["median_ms"] for p in per_photo]),
        "per_photo": per_photo,
        "repeat": repeat,
        "load_average_before": before,
        "load_average_after": after,
        "command": f"CI=1 RAYON_NUM_THREADS={threads} {binary} detect PHOTO... (each photo "
                   f"{repeat} times)",
    }


def fmt(v, spec):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


HEADER = ("| labels | detector | setting | threads | photos | recall | unmatched | "
          "median ms / photo | median IoU | load avg 1 min (before/after) |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def table_row(row) -> str:
    if row["labels"] == "photos":
        return (f"| whole photos | {row['detector']} | {row['setting']} | {row['threads']} | "
                f"{row['photos']} | {row['faces']} faces | | "
                f"{fmt(row['median_detection_ms'], '.1f')} | | "
                f"{row['load_average_before'][0]:.2f} / {row['load_average_after'][0]:.2f} |")
    setting = (f"upsample {row['upsample']}" if row["detector"] == "dlib-hog"
               else f"--min-face {row['min_face']}")
    recall = f"{row['detected']} / {row['count']}"
    if row["count"]:
        recall += f" ({100 * row['recall']:.1f} %)"
    return (f"| {os.path.basename(row['labels'])} | {row['detector']} | {setting} | "
            f"{row['threads']} | {row['photos']} | {recall} | {row['unmatched_detections']} | "
            f"{fmt(row['median_detection_ms'], '.1f')} | {fmt(row['median_iou'], '.2f')} | "
            f"{row['load_average_before'][0]:.2f} / {row['load_average_after'][0]:.2f} |")


def main(argv=None):
    args = parse_args(argv)
    rows = []
    threads = [int(t) for t in args.threads.split(",")]

    def record(row):
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    for labels in args.labels:
        if not args.skip_dlib:
            record(run_dlib(labels, args.upsample))
        if not args.skip_facemark:
            for n in threads:
                record(run_facemark(labels, args.facemark, args.min_face, n))
    if args.photos:
        if not args.skip_dlib:
            record(run_dlib_photos(args.photos, args.upsample, args.repeat, args.max_side))
            record(run_dlib_photos(args.photos, args.upsample, args.repeat, None))
        if not args.skip_facemark:
            for n in threads:
                record(run_facemark_photos(args.photos, args.facemark, args.min_face, n,
                                           args.repeat))
    print(f"machine: {os.cpu_count()} cores, load average at the end {loadavg()}")
    print(HEADER)
    for row in rows:
        print(table_row(row))
    photo_rows = [r for r in rows if r["labels"] == "photos"]
    if photo_rows:
        print("\nper photo, median ms (faces found):\n")
        print("| photo | " + " | ".join(f"{r['detector']} {r['setting']}, {r['threads']} thr."
                                       for r in photo_rows) + " |")
        print("|---|" + "---|" * len(photo_rows))
        for i, path in enumerate(args.photos):
            cells = [f"{r['per_photo'][i]['median_ms']:.1f} ({r['per_photo'][i]['faces']})"
                     for r in photo_rows]
            size = photo_rows[0]["per_photo"][i].get("size")
            name = os.path.basename(path) + (f" ({size})" if size else "")
            print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        with open(args.out, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
