import pytest
import torch
from torch import nn

from distill.errors import ConfigError
from distill.taps import Taps, normalize_name


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(x))


class FakeDDP(nn.Module):
    """Same attribute layout as DistributedDataParallel: the model under `.module`."""

    def __init__(self, m):
        super().__init__()
        self.module = m

    def forward(self, x):
        return self.module(x)


class FakeCompiled(nn.Module):
    def __init__(self, m):
        super().__init__()
        self._orig_mod = m

    def forward(self, x):
        return self._orig_mod(x)


def test_normalize_strips_wrapper_prefixes():
    assert normalize_name("module._orig_mod.body.0") == "body.0"
    assert normalize_name("_orig_mod.module.head") == "head"
    assert normalize_name("encoder.module.layer") == "encoder.layer"


@pytest.mark.parametrize("wrap", [lambda m: m, FakeDDP, FakeCompiled, lambda m: FakeDDP(FakeCompiled(m))])
@pytest.mark.parametrize("name", ["body.0", "module.body.0", "_orig_mod.body.0"])
def test_taps_capture_the_same_tensor_through_wrappers(wrap, name):
    torch.manual_seed(0)
    net = Net()
    x = torch.randn(2, 4)
    expected = net.body[0](x)
    wrapped = wrap(net)
    with Taps(wrapped, [name]) as taps:
        wrapped(x)
    got = taps[name]
    assert torch.allclose(got, expected)
    assert got.abs().sum() > 0  # a feature loss on it is not silently zero


def test_taps_keep_autograd_history_and_detach_cleanly():
    net = Net()
    with Taps(net, ["body"]) as taps:
        net(torch.randn(2, 4))
    taps["body"].sum().backward()
    assert net.body[0].weight.grad is not None
    assert not net.body._forward_hooks


def test_wrong_name_lists_closest_modules():
    with pytest.raises(ConfigError, match=r"tap .body.O.*Closest: .*body\.0"):
        Taps(Net(), ["body.O"])
