"""Type stubs of facemark's extension module (re-exported by the `facemark` package)."""

import os
import pathlib
from typing import Any, Protocol, Sequence, Union

import numpy as np
import numpy.typing as npt

class _PILImage(Protocol):
    """What facemark needs of a PIL image: its mode and `convert`."""

    mode: str
    def convert(self, mode: str) -> Any: ...

Image = Union[npt.NDArray[np.uint8], _PILImage, str, os.PathLike[str]]
"""numpy uint8 HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA, alpha dropped); a PIL image; or a photo
file, decoded as the `facemark` command decodes it (EXIF orientation applied)."""

Box = Sequence[float]
"""A face box `(left, top, width, height)` in pixels."""

class Face:
    """One face: its box, the detector's score and its landmarks."""

    @property
    def box(self) -> tuple[float, float, float, float] | None:
        """`(left, top, width, height)` in pixels; None for a whole-image model (nose, imm58)."""
    @property
    def score(self) -> float | None:
        """The detector's confidence (higher is surer); None when the box was given."""
    @property
    def points(self) -> npt.NDArray[np.float32]:
        """`(N, 2)` float32 `x, y` in pixels; pixel `i` covers `[i, i + 1)` (its centre is
        `i + 0.5`)."""

class LabeledFaces:
    """An image of a dlib XML label file with its annotated faces."""

    @property
    def path(self) -> pathlib.Path:
        """The image's path, resolved against the XML file's folder."""
    @property
    def size(self) -> tuple[int, int] | None:
        """`(width, height)` when the XML states it."""
    @property
    def faces(self) -> list[Face]:
        """Each face's box and points (`(0, 2)` when it has none); `score` is None."""

class Landmarker:
    """Finds faces and their landmarks: facemark's face detector and a landmark model.

    `model` is a shipped model's name (`facemark.shipped_models()`) or a training run's directory;
    None loads the best shipped 68-point model. `min_face` is the smallest face looked for, in
    pixels (None: the detector's default, 40, as the command's); `refine` the landmark passes
    after the first, each from the previous pass's own tight box, in detected and given boxes
    alike (as the command's `--min-face` and `--refine`). The GIL is released while facemark
    computes.
    """

    def __init__(
        self,
        model: str | os.PathLike[str] | None = None,
        *,
        min_face: int | None = None,
        refine: int = 1,
    ) -> None: ...
    @property
    def model(self) -> str:
        """The model's name or directory."""
    @property
    def num_points(self) -> int:
        """Points per face (68 for the 300-W models)."""
    def __call__(self, image: Image) -> list[Face]:
        """Every face the detector finds in `image`, surest first."""
    def predict(self, image: Image, boxes: Sequence[Box] | None = None) -> list[Face]:
        """The faces in `boxes` (no detection, refined as `refine` says: the points `facemark
        predict --box` gives), or every face the detector finds when `boxes` is None."""
    def predict_batch(
        self, images: Sequence[Image], boxes: Sequence[Sequence[Box]] | None = None
    ) -> list[list[Face]]:
        """`predict` for many images in one call; `boxes` holds one list per image."""

def read_pts(path: str | os.PathLike[str]) -> npt.NDArray[np.float32]:
    """A 300-W `.pts` file's points, `(N, 2)` float32 in facemark's convention (the file's 1-based
    coordinates minus 0.5, the convention of `Face.points`)."""

def read_dlib_xml(path: str | os.PathLike[str]) -> list[LabeledFaces]:
    """The images, boxes and points of a dlib XML label file."""

def nme(predicted: npt.ArrayLike, truth: npt.ArrayLike) -> float:
    """One face's normalised mean error as a fraction (0.0325 is 3.25 %): the mean distance
    between predicted and true `(N, 2)` points divided by the inter-ocular distance (outer eye
    corners) for 68 points, or by the diagonal of the true points' bounding box for any other
    count. ValueError when the counts differ or the distance is zero (a single point)."""

def shipped_models() -> list[str]:
    """The names of the models inside the package."""
