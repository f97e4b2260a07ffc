"""Trajectory matching: what the unrolled graph keeps per step, and checkpointing leaves gradients unchanged."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from ds_helpers import tiny_ctx  # noqa: E402

from distill.families.dataset.mtt import MTT  # noqa: E402


def _method(steps: int, checkpoint: bool) -> MTT:
    m = MTT(tiny_ctx(), num_experts=1, expert_epochs=2, max_start_epoch=1, match_epochs=1, syn_steps=steps,
            checkpoint=checkpoint, augment=False)
    m.setup()
    return m


def _saved_bytes(m: MTT) -> int:
    """Bytes of the distinct tensors the autograd graph of one unroll saves for the backward pass."""
    seen, total = set(), [0]

    def pack(t):
        if id(t) not in seen:
            seen.add(id(t))
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        m.unroll(m.experts[0][0], 0)
    return total[0]


def test_unrolled_memory_is_two_parameter_vectors_per_step_with_checkpointing():
    P_bytes = _method(1, True).experts[0].shape[1] * 4
    ck = {s: _saved_bytes(_method(s, True)) for s in (2, 8)}
    plain = {s: _saved_bytes(_method(s, False)) for s in (2, 8)}
    per_step_ck = (ck[8] - ck[2]) / 6
    per_step_plain = (plain[8] - plain[2]) / 6
    assert per_step_ck <= 2.2 * P_bytes          # documented: about 2P floats per unrolled step
    assert per_step_plain > 5 * per_step_ck      # without checkpointing, activations and 2nd-order graph too


def test_checkpointing_gives_the_same_gradients():
    grads = []
    for ck in (True, False):
        torch.manual_seed(0)
        m = _method(3, ck)
        theta0, target = m.experts[0][0], m.experts[0][1]
        theta = m.unroll(theta0, 0)
        loss = ((theta - target) ** 2).sum() / ((theta0 - target) ** 2).sum()
        loss.backward()
        grads.append((m.images.grad.clone(), m.syn_lr.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-6)
    assert torch.allclose(grads[0][1], grads[1][1], atol=1e-6)
