"""Facial landmarks with facemark's own engine: CPU only, no PyTorch, nothing downloaded.

>>> import facemark
>>> lm = facemark.Landmarker()          # the best shipped 68-point model
>>> faces = lm(image)                   # numpy uint8 HxW / HxWx3 / HxWx4, a PIL image or a path
>>> faces[0].box, faces[0].score, faces[0].points
"""

from ._facemark import (
    Face,
    LabeledFaces,
    Landmarker,
    nme,
    read_dlib_xml,
    read_pts,
    shipped_models,
)

__all__ = [
    "Face",
    "LabeledFaces",
    "Landmarker",
    "nme",
    "read_dlib_xml",
    "read_pts",
    "shipped_models",
]
