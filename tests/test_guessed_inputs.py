"""Say it when the input is off (issue 21, item 4), also for a model that records neither bounds nor classes: a
user's own .pt2 gets a warning line for 0-255 images and for an image folder's alphabetical class order."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bastion.core.data import Dataset
from bastion.models.loader import guessed_input_notes, resolve_shape_and_bounds
from bastion.models.metadata import ModelMetadata

BARE = ModelMetadata()  # what a user's own export carries


def images(hi: float, names: list[str] | None = None) -> Dataset:
    x = np.linspace(0, hi, 2 * 64).reshape(2, 1, 8, 8)
    return Dataset(x, np.array([0, 1]), "imgs", names or [])


def test_8bit_images_on_a_model_without_bounds_are_flagged_with_the_fix():
    (note,) = guessed_input_notes(images(255.0), BARE, bounds_guessed=True)
    assert "divide the data by 255" in note and "[0, 255]" in note
    assert not guessed_input_notes(images(1.0), BARE, bounds_guessed=True)  # [0, 1] images: nothing to say
    assert not guessed_input_notes(images(255.0), BARE, bounds_guessed=False)  # bounds given: checked elsewhere
    tabular = Dataset(np.array([[30.0, 200.0], [50.0, 90.0]]), np.array([0, 1]))
    assert not guessed_input_notes(tabular, BARE, bounds_guessed=True)  # ages, prices: no pixels


def test_an_alphabetical_class_order_is_flagged_unless_the_model_names_its_classes():
    (note,) = guessed_input_notes(images(1.0, ["cat", "dog"]), BARE, bounds_guessed=True)
    assert "--classes" in note and "alphabetical" in note
    assert not guessed_input_notes(images(1.0, ["0", "1"]), BARE, True)  # numeric folders: numeric order
    assert not guessed_input_notes(images(1.0, ["cat", "dog"]), ModelMetadata(class_names=["dog", "cat"]), True)
    assert not guessed_input_notes(images(1.0, ["dog", "cat"]), BARE, True)  # --classes gave another order


def test_a_model_that_records_bounds_still_refuses_255_data():
    from bastion.core.errors import DataError

    with pytest.raises(DataError, match="divide the data by 255"):
        resolve_shape_and_bounds(ModelMetadata(bounds=[0.0, 1.0], input_shape=[1, 8, 8]), images(255.0), None, "m")


def test_the_cli_prints_the_class_order_warning_for_a_users_pt2(tmp_path):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 2)).eval()
    batch = {0: torch.export.Dim("batch")}
    torch.export.save(torch.export.export(model, (torch.zeros(4, 1, 8, 8),), dynamic_shapes=(batch,)),
                      str(tmp_path / "m.pt2"))
    for k, name in enumerate(["dog", "cat"]):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 40 * k, np.uint8)).save(tmp_path / "imgs" / name / "a.png")
    run = subprocess.run([sys.executable, "-m", "bastion", "attack", "evasion", "fgsm", str(tmp_path / "m.pt2"),
                          "--data", str(tmp_path / "imgs"), "--json", "--device", "cpu"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "classes are taken in alphabetical order (cat, dog)" in run.stderr
