"""How good can dlib's ERT shape predictor get on our 300-W training faces alone?
(not run in CI; run by hand in the dlib venv, like landmarks.py).

Trains `dlib.train_shape_predictor` (an ensemble of regression trees, Kazemi & Sullivan) on the
faces of `labels_300w_train_hogbox.xml` (dlib HOG boxes; landmarks from each image's `.pts`, 0-based,
rounded half up, exactly as `landmarks.py --train` does), with the settings given on the command
line, and scores it on `labels_300w_test_hogbox.xml` from the file's boxes against the `.pts` truth
(inter-ocular NME, `landmarks.evaluate`).

`--mirror` adds a horizontally mirrored copy of every training face: the photo's PIL grey
(`convert("L")`, EXIF orientation applied) mirrored with `ImageOps.mirror` and saved as PNG under
`<work>/mirror/`, the box mirrored (left' = W - 1 - (left + width - 1)), each point mirrored
(x' = W - 1 - x, on the unrounded `.pts` point, then rounded) and the 68 points re-ordered with the
iBUG mirror permutation (new point i = old point MIRROR[i]). A check that mirroring a face twice
gives back its points, box and pixels runs first.

The training XML, the model and the predictions XML go to `--work` (default /tmp/ert). One JSON
line per run is appended to `--jsonl` (default `ert_ceiling.jsonl` beside this script): settings,
mirror flag, training faces, test faces, NME, median ms per face, model bytes, train seconds and
the load average before training, after training and after evaluation.

Example (one thread, niced, as on a shared machine):

    nice -n 10 /root/venvs/dlib/bin/python bench/dlib/ert_ceiling.py --mirror
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
import xml.etree.ElementTree as ET

import dlib
import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from landmarks import TRAIN_FILE, evaluate, load_gray, read_labels, source_counts  # noqa: E402

TEST_FILE = "labels_300w_test_hogbox.xml"
HERE = os.path.dirname(os.path.abspath(__file__))

# iBUG 68-point mirror permutation: after mirroring, new point i is old point MIRROR[i].
MIRROR = [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
          26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
          27, 28, 29, 30,
          35, 34, 33, 32, 31,
          45, 44, 43, 42, 47, 46,
          39, 38, 37, 36, 41, 40,
          54, 53, 52, 51, 50, 49, 48,
          59, 58, 57, 56, 55,
          64, 63, 62, 61, 60,
          67, 66, 65]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/shared/data/ibug_300w")
    p.add_argument("--work", default="/tmp/ert", help="training XML, mirrored images, model")
    p.add_argument("--jsonl", default=os.path.join(HERE, "ert_ceiling.jsonl"))
    p.add_argument("--name", default=None, help="run name (default: from the settings)")
    p.add_argument("--mirror", action="store_true", help="add a mirrored copy of every face")
    p.add_argument("--cascade-depth", type=int, default=15)
    p.add_argument("--tree-depth", type=int, default=5)
    p.add_argument("--trees", type=int, default=500, help="trees per cascade level")
    p.add_argument("--nu", type=float, default=0.1)
    p.add_argument("--oversampling", type=int, default=20)
    p.add_argument("--feature-pool", type=int, default=800)
    p.add_argument("--test-splits", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--verbose", action="store_true", help="dlib's training progress on stdout")
    return p.parse_args(argv)


def rounded(points: np.ndarray) -> np.ndarray:
    """Points rounded half up to integers, as dlib's XML and full_object_detection hold them."""
    return np.floor(points + 0.5).astype(int)


def mirror_points(points: np.ndarray, width: int) -> np.ndarray:
    out = points[MIRROR].copy()
    out[:, 0] = width - 1 - out[:, 0]
    return out


def mirror_box(left: int, width: int, image_width: int) -> int:
    """The mirrored box's left edge (dlib boxes are inclusive: right = left + width - 1)."""
    return image_width - 1 - (left + width - 1)


def set_parts(box, points: np.ndarray) -> int:
    """Write rounded points into the box's <part> elements; how many coordinates changed."""
    changed = 0
    for part in box.findall("part"):
        x, y = rounded(points[int(part.get("name"))])
        changed += (str(x), str(y)) != (part.get("x"), part.get("y"))
        part.set("x", str(x))
        part.set("y", str(y))
    return changed


def check_mirror(data: str, images) -> dict:
    """Mirror the first face twice: points, box and pixels must come back unchanged; the mirrored
    image's pixel under each mirrored point must be the original's under the original point."""
    assert sorted(MIRROR) == list(range(68))
    assert all(MIRROR[MIRROR[i]] == i for i in range(68))
    img, boxes = next((i, b) for i, b in images if b)
    box, points, _ = boxes[0]
    gray = load_gray(os.path.join(data, img.get("file")))
    h, w = gray.shape
    twice = mirror_points(mirror_points(points, w), w)
    assert np.abs(twice - points).max() < 1e-9, "points mirrored twice differ"
    left, width = int(box.get("left")), int(box.get("width"))
    assert mirror_box(mirror_box(left, width, w), width, w) == left, "box mirrored twice differs"
    once = np.asarray(ImageOps.mirror(Image.fromarray(gray)))
    assert np.array_equal(np.asarray(ImageOps.mirror(Image.fromarray(once))), gray)
    p = rounded(points)
    pm = mirror_points(p.astype(np.float64), w).astype(int)
    inside = [i for i in range(68) if 0 <= p[i][0] < w and 0 <= p[i][1] < h]
    ok = all(once[pm[MIRROR[i]][1], pm[MIRROR[i]][0]] == gray[p[i][1], p[i][0]] for i in inside)
    assert ok, "mirrored pixels under mirrored points differ"
    # Point 36 (right eye, outer corner) must land where the old 45 (left eye outer) mirrors to.
    assert np.allclose(mirror_points(points, w)[36], [w - 1 - points[45][0], points[45][1]])
    return {"image": img.get("file"), "width": w, "max_abs_diff_twice": float(
        np.abs(twice - points).max())}


def build_training_xml(data: str, work: str, mirror: bool) -> tuple[str, dict]:
    tree, images = read_labels(data, TRAIN_FILE)
    info = {"point_sources": source_counts(images)}
    if mirror:
        info["mirror_check"] = check_mirror(data, images)
        os.makedirs(os.path.join(work, "mirror"), exist_ok=True)
    parent = tree.getroot().find("images")
    changed, faces, mirrored = 0, 0, []
    for img, boxes in images:
        rel = img.get("file")
        img.set("file", os.path.join(data, rel))  # the XML is written elsewhere
        for box, points, _ in boxes:
            changed += set_parts(box, points)
            faces += 1
        if not (mirror and boxes):
            continue
        gray = load_gray(os.path.join(data, rel))
        h, w = gray.shape
        assert (w, h) == (int(img.get("width", w)), int(img.get("height", h))), rel
        out = os.path.join(work, "mirror", os.path.splitext(rel)[0].replace("/", "__") + ".png")
        if not os.path.exists(out):
            ImageOps.mirror(Image.fromarray(gray)).save(out)
        twin = copy.deepcopy(img)
        twin.set("file", out)
        for twin_box, (box, points, _) in zip(twin.findall("box"), boxes):
            twin_box.set("left", str(mirror_box(int(box.get("left")), int(box.get("width")), w)))
            set_parts(twin_box, mirror_points(points, w))
            faces += 1
        mirrored.append(twin)
    for twin in mirrored:
        parent.append(twin)
    info.update(train_faces=faces, mirrored_faces=sum(len(t.findall("box")) for t in mirrored),
                coordinates_differing_from_xml=changed)
    xml = os.path.join(work, f"train{'_mirror' if mirror else ''}.xml")
    tree.write(xml, encoding="ISO-8859-1", xml_declaration=True)
    return xml, info


def main(argv=None):
    args = parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    name = args.name or (f"ert_c{args.cascade_depth}_d{args.tree_depth}_t{args.trees}"
                         f"_f{args.feature_pool}_o{args.oversampling}"
                         + ("_mirror" if args.mirror else ""))
    xml, info = build_training_xml(args.data, args.work, args.mirror)
    print(json.dumps({"run": name, "train_xml": xml, **info}), flush=True)

    options = dlib.shape_predictor_training_options()
    options.cascade_depth = args.cascade_depth
    options.tree_depth = args.tree_depth
    options.num_trees_per_cascade_level = args.trees
    options.nu = args.nu
    options.oversampling_amount = args.oversampling
    options.feature_pool_size = args.feature_pool
    options.num_test_splits = args.test_splits
    options.num_threads = args.threads
    options.be_verbose = args.verbose
    model = os.path.join(args.work, name + ".dat")
    load_before = os.getloadavg()
    start = time.perf_counter()
    dlib.train_shape_predictor(xml, model, options)
    seconds = round(time.perf_counter() - start, 1)
    load_trained = os.getloadavg()

    row = evaluate(args.data, name, model, TEST_FILE, args.work, seconds)
    row = {"run": name, "mirror": args.mirror,
           "settings": {"cascade_depth": args.cascade_depth, "tree_depth": args.tree_depth,
                        "trees_per_level": args.trees, "nu": args.nu,
                        "oversampling": args.oversampling, "feature_pool": args.feature_pool,
                        "num_test_splits": args.test_splits, "num_threads": args.threads},
           "options": str(options), "train_faces": info["train_faces"],
           "test_faces": row.pop("faces"), **row,
           "load_average": {"before_train": load_before, "after_train": load_trained,
                            "after_eval": row.pop("load_average")},
           "niceness": os.nice(0), "command": " ".join([sys.executable] + sys.argv)}
    print(json.dumps(row), flush=True)
    with open(args.jsonl, "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
