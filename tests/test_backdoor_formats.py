"""Features of TorchScript and torch.export models, read by graph rewriting, equal those of the eager model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.core.errors import ParameterError
from bastion.defenses.detect.features import feature_layer, representation
from bastion.demo.models import digits_cnn
from bastion.models import load_target
from bastion.models.export import save_model
from bastion.models.intermediate import layers
from bastion.models.metadata import ModelMetadata
from tests.poisoning_fixtures import single_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with single_thread():
        yield


class Nested(nn.Module):
    """Named sub-modules, a functional ReLU between them: the head's input is not any module's output."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten())
        self.head = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x) - 0.1))


def saved(model: nn.Module, suffix: str, n_classes: int, tmp_path) -> nn.Module:
    path = tmp_path / f"model{suffix}"
    save_model(model, path, ModelMetadata(n_classes=n_classes, input_shape=[1, 8, 8]))
    return load_target(str(path), device="cpu").model


@pytest.mark.parametrize("suffix", [".pt", ".pt2"])
@pytest.mark.parametrize("build,n_classes,named", [(digits_cnn, 10, "4"), (Nested, 3, "features.0")],
                         ids=["sequential", "nested"])
def test_loaded_model_features_equal_eager_features(build, n_classes, named, suffix, tmp_path):
    torch.manual_seed(0)
    model = build().eval()
    loaded = saved(model, suffix, n_classes, tmp_path)
    x = torch.rand(9, 1, 8, 8)
    assert feature_layer(loaded) == feature_layer(model)  # the model's own names, no wrapper prefix
    assert [n for n, _ in layers(loaded)] == [n for n, _ in layers(model)]
    default = representation(model, x)
    assert default.shape[0] == 9 and torch.allclose(representation(loaded, x), default, atol=1e-6)
    assert torch.allclose(representation(loaded, x, named), representation(model, x, named), atol=1e-6)
    assert not torch.allclose(representation(loaded, x, named).flatten()[:10], torch.zeros(10))
    with pytest.raises(ParameterError, match=f"layers are {layers(model)[0][0]}, "):
        representation(loaded, x, "nope")


def test_default_layer_is_the_penultimate_representation():
    nested, cnn = Nested(), digits_cnn()
    assert feature_layer(nested) == ("head", True)
    assert feature_layer(cnn) == ("6", True)
    x = torch.rand(4, 1, 8, 8)
    expected = torch.relu(nested.features(x) - 0.1)
    assert torch.allclose(representation(nested, x), expected)
    with pytest.raises(ParameterError, match="no linear layer"):
        feature_layer(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))
