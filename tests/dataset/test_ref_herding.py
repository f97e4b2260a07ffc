"""Herding (Welling 2009) as the coreset baseline of the dataset-distillation papers (DC, Zhao et al.
2021: herding in the feature space of a ConvNet trained on the real data), not on random features."""
import torch

from distill.data.digits import digits
from distill.families.dataset.base import DistillContext
from distill.families.dataset.herding import Herding
from distill.models.io import build_model
from distill.registry import methods


def digits_ctx(ipc: int = 2) -> DistillContext:
    """The digits tier's data (16x16, normalised) and its width-32 ConvNet."""
    train = digits(size=16).train
    x = (train.x - train.x.mean()) / train.x.std()

    def make(s: int):
        torch.manual_seed(s)
        return build_model("convnet", {"width": 32}, (1, 16, 16), 10, family="dataset")

    return DistillContext(x, train.y, 10, ipc, make, torch.device("cpu"), 0, "convnet", {"width": 32})


def test_herding_defaults_to_a_trained_embedder():
    params = methods.get("herding", "dataset").validate({}, "params")
    assert params["train_epochs"] == 10
    trained = Herding(digits_ctx(), **params)
    trained.setup()
    random = Herding(digits_ctx(), **{**params, "train_epochs": 0})
    random.setup()
    # the default embedder has learnt the classes (96% here); a random one is near chance (10%)
    assert trained.embedder_accuracy > 0.9 > 0.3 > random.embedder_accuracy
    s = trained.result()
    assert s.images.shape == (20, 1, 16, 16) and sorted(s.labels.tolist()) == sorted(list(range(10)) * 2)
    assert not torch.equal(s.images, random.result().images)  # the trained space selects other images
