"""dlib's 68-point shape predictors on the 300-W test crops, for comparison with facemark
(not run in CI; see README.md).

Predictors:

* `released`: dlib's `shape_predictor_68_face_landmarks.dat`, as shipped by the PyPI package
  `face_recognition_models` (`pose_predictor_model_location()`).
* `trained`: the same recipe trained here with dlib's own trainer (`--train`; otherwise the model
  already at `--model-out` is used): `dlib.train_shape_predictor` on
  `labels_300w_train_hogbox.xml` (dlib HOG boxes) with tree depth 4, cascade depth 10, 500 trees
  per level, nu 0.1, oversampling 20, feature pool 400, 2 threads. The landmarks are each image's
  `.pts` (1-based, so minus 1), used where they agree with the XML parts within 1 px (else the XML
  parts). dlib's XML reader and `full_object_detection` hold integer points, so the training XML
  carries them rounded half up; the train time is kept in `<model-out>.json`.

For each predictor and each test file (`labels_300w_test.xml`: tight landmark boxes;
`labels_300w_test_hogbox.xml`: dlib HOG boxes), every face is predicted from the file's own box on
the photo's PIL grey (`convert("L")`), timing the predictor call alone (`time.perf_counter`), and
the predictions are written to `--out` as a dlib XML (`<predictor>__<test file>`: the same
`<image>` entries and boxes in the same order, 68 parts per box, 0-based, 2 decimals; dlib's own
API returns integer points, and dlib's XML loader refuses the decimals). One JSON line per
(predictor, test file) is printed and written to `<out>/landmarks.jsonl`: faces, median ms per face,
model size, train seconds, dlib version, and the inter-ocular NME against the `.pts` ground truth
(mean over faces of the mean point error over the distance between points 36 and 45, 0-based).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import xml.etree.ElementTree as ET
from xml.sax.saxutils import escape

import dlib
import numpy as np
from PIL import Image, ImageOps

TEST_FILES = ("labels_300w_test.xml", "labels_300w_test_hogbox.xml")
TRAIN_FILE = "labels_300w_train_hogbox.xml"
HERE = os.path.dirname(os.path.abspath(__file__))


def attributes(element) -> str:
    """An element's attributes as dlib writes them: ` name='value'`, in the file's order."""
    return "".join(f" {k}='{escape(v, {chr(39): '&apos;'})}'" for k, v in element.attrib.items())


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/shared/data/ibug_300w")
    p.add_argument("--train", action="store_true", help="train the `trained` predictor first")
    p.add_argument("--model-out", default="/root/dlib-models/trained_300w_hogbox.dat")
    p.add_argument("--out", default=os.path.join(HERE, "landmarks"))
    return p.parse_args(argv)


def read_pts(path: str) -> np.ndarray | None:
    """The 68 points of an iBUG .pts (headed or bare), 0-based; None if the file is missing."""
    if not os.path.exists(path):
        return None
    rows = []
    with open(path) as f:
        for line in f:
            fields = line.split()
            if len(fields) == 2 and fields[0][0] not in "vn{}":
                rows.append([float(v) for v in fields])
    pts = np.array(rows, dtype=np.float64) - 1.0
    return pts if pts.shape == (68, 2) else None


def read_labels(data: str, name: str):
    """(tree, [(image element, [(box element, ground truth (68, 2), source)])]): the XML's own
    elements, and each box's points from the image's .pts where they agree with the box's parts
    within 1 px, else from the parts (source says which: 'pts', 'xml: missing .pts', ...)."""
    tree = ET.parse(os.path.join(data, name))
    images = []
    for img in tree.getroot().iter("image"):
        pts = read_pts(os.path.join(data, os.path.splitext(img.get("file"))[0] + ".pts"))
        boxes = []
        for box in img.findall("box"):
            parts = sorted(box.findall("part"), key=lambda p: int(p.get("name")))
            xml = np.array([[float(p.get("x")), float(p.get("y"))] for p in parts])
            if pts is None:
                boxes.append((box, xml, "xml: missing .pts"))
            elif xml.shape != (68, 2) or np.abs(pts - xml).max() > 1.0:
                boxes.append((box, xml if xml.shape == (68, 2) else pts, "disagree"))
            else:
                boxes.append((box, pts, "pts"))
        images.append((img, boxes))
    return tree, images


def source_counts(images) -> dict:
    counts: dict = {}
    for _, boxes in images:
        for _, _, src in boxes:
            counts[src] = counts.get(src, 0) + 1
    return counts


def train(data: str, model_out: str) -> dict:
    tree, images = read_labels(data, TRAIN_FILE)
    changed = 0
    for img, boxes in images:
        img.set("file", os.path.join(data, img.get("file")))  # the XML is written elsewhere
        for box, points, _ in boxes:
            for part in box.findall("part"):
                x, y = np.floor(points[int(part.get("name"))] + 0.5).astype(int)
                changed += (str(x), str(y)) != (part.get("x"), part.get("y"))
                part.set("x", str(x))
                part.set("y", str(y))
    options = dlib.shape_predictor_training_options()
    options.tree_depth = 4
    options.cascade_depth = 10
    options.num_trees_per_cascade_level = 500
    options.nu = 0.1
    options.oversampling_amount = 20
    options.feature_pool_size = 400
    options.num_threads = 2
    options.be_verbose = False
    os.makedirs(os.path.dirname(os.path.abspath(model_out)), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        xml = os.path.join(tmp, "train.xml")
        tree.write(xml, encoding="ISO-8859-1", xml_declaration=True)
        start = time.perf_counter()
        dlib.train_shape_predictor(xml, model_out, options)
        seconds = time.perf_counter() - start
    info = {"train_file": TRAIN_FILE, "faces": sum(len(b) for _, b in images),
            "point_sources": source_counts(images), "coordinates_differing_from_xml": changed,
            "options": str(options), "train_seconds": round(seconds, 1),
            "dlib_version": dlib.__version__}
    with open(model_out + ".json", "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info), flush=True)
    return info


def load_gray(path: str) -> np.ndarray:
    with Image.open(path) as img:
        return np.ascontiguousarray(np.asarray(ImageOps.exif_transpose(img).convert("L")))


def evaluate(data, predictor_name, model, test_file, out_dir, train_seconds) -> dict:
    predictor = dlib.shape_predictor(model)
    _, images = read_labels(data, test_file)
    times, errors, lines = [], [], []
    for img, boxes in images:
        gray = load_gray(os.path.join(data, img.get("file")))
        lines.append(f"  <image{attributes(img)}>")
        for box, truth, _ in boxes:
            left, top = int(box.get("left")), int(box.get("top"))
            rect = dlib.rectangle(left, top, left + int(box.get("width")) - 1,
                                  top + int(box.get("height")) - 1)
            start = time.perf_counter()
            shape = predictor(gray, rect)
            times.append(time.perf_counter() - start)
            pred = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)],
                            dtype=np.float64)
            eye_distance = np.linalg.norm(truth[36] - truth[45])
            errors.append(np.linalg.norm(pred - truth, axis=1).mean() / eye_distance)
            lines.append(f"    <box{attributes(box)}>")
            lines += [f"      <part name='{i:02d}' x='{x:.2f}' y='{y:.2f}'/>"
                      for i, (x, y) in enumerate(pred)]
            lines.append("    </box>")
        lines.append("  </image>")
    out_xml = os.path.join(out_dir, f"{predictor_name}__{test_file}")
    with open(out_xml, "w", encoding="ISO-8859-1") as f:
        f.write("<?xml version='1.0' encoding='ISO-8859-1'?>\n<dataset>\n"
                f"<name>dlib {predictor_name} predictor on {test_file}</name>\n"
                f"<comment>{os.path.basename(model)}, dlib {dlib.__version__}; boxes as in "
                f"{test_file}; parts predicted, 0-based.</comment>\n<images>\n"
                + "\n".join(lines) + "\n</images>\n</dataset>\n")
    ET.parse(out_xml)  # must parse with a standard XML parser
    return {"predictor": predictor_name, "test_file": test_file, "faces": len(times),
            "images_without_box": sum(not b for _, b in images),
            "truth_sources": source_counts(images),
            "median_ms_per_face": round(float(np.median(times)) * 1e3, 4),
            "model_file": model, "model_bytes": os.path.getsize(model),
            "train_seconds": train_seconds, "dlib_version": dlib.__version__,
            "nme_interocular_percent": round(float(np.mean(errors)) * 100, 3),
            "load_average": os.getloadavg(), "out_xml": out_xml}


def main(argv=None):
    args = parse_args(argv)
    import face_recognition_models

    predictors = [("released", face_recognition_models.pose_predictor_model_location(), None)]
    if args.train:
        train(args.data, args.model_out)
    if os.path.exists(args.model_out):
        info_path = args.model_out + ".json"
        seconds = json.load(open(info_path))["train_seconds"] if os.path.exists(info_path) else None
        predictors.append(("trained", args.model_out, seconds))
    else:
        print(f"no trained model at {args.model_out} (use --train); only the released one is run")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "landmarks.jsonl"), "w") as rows:
        for name, model, seconds in predictors:
            for test_file in TEST_FILES:
                row = evaluate(args.data, name, model, test_file, args.out, seconds)
                print(json.dumps(row), flush=True)
                rows.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
