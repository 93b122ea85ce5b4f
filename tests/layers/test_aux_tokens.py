"""Aux tokens: the window partition with [head, tokens, tail], and the O(1) in-place head/tail swap."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from sfmamba.layers import AuxTokens, swap_aux_tokens_
from sfmamba.models.mambavision import window_partition


@pytest.mark.parametrize("init", ["learnable", "mean"])
def test_attach_places_tokens_around_each_window(init):
    torch.manual_seed(0)
    aux = AuxTokens(6, init=init)
    x = torch.randn(2, 6, 8, 4)
    seq = aux.attach(x, 4)
    windows = window_partition(x, 4)
    assert seq.shape == (4, 18, 6)
    torch.testing.assert_close(seq[:, 1:-1], windows, rtol=0, atol=0)
    if init == "learnable":
        head, tail = aux.tokens.detach()
    else:
        assert not list(aux.parameters())
        head = tail = windows.mean(1)
    torch.testing.assert_close(seq[:, 0], head.expand(4, 6))
    torch.testing.assert_close(seq[:, -1], tail.expand(4, 6))


def test_attach_gradients_reach_input_and_tokens():
    aux = AuxTokens(3)
    x = torch.randn(1, 3, 2, 2, requires_grad=True)
    weights = torch.randn(1, 6, 3)
    (aux.attach(x, 2) * weights).sum().backward()
    torch.testing.assert_close(aux.tokens.grad, weights[0, [0, -1]])
    torch.testing.assert_close(x.grad, weights[0, 1:-1].t().reshape(1, 3, 2, 2))


def test_swap_is_in_place_and_touches_only_the_two_end_rows():
    x = torch.randn(3, 7, 5)
    before = x.clone()
    ptr = x.data_ptr()
    out = swap_aux_tokens_(x)
    assert out is x and x.data_ptr() == ptr
    torch.testing.assert_close(x[:, 0], before[:, -1], rtol=0, atol=0)
    torch.testing.assert_close(x[:, -1], before[:, 0], rtol=0, atol=0)
    torch.testing.assert_close(x[:, 1:-1], before[:, 1:-1], rtol=0, atol=0)


class _ElementCounter(TorchDispatchMode):
    """Sums the elements of every tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and not t._is_view():
                self.elements += t.numel()
        return out


def test_swap_cost_does_not_depend_on_the_sequence_length():
    costs = []
    for length in (6, 3000):
        x = torch.randn(4, length, 8)
        with _ElementCounter() as counter:
            swap_aux_tokens_(x)
        costs.append(counter.elements)
    assert costs[0] == costs[1] <= 2 * 4 * 8 * 2  # the flipped copy of the two rows (+ the in-place write)


def test_swap_gradient_follows_the_rows():
    x = torch.randn(2, 5, 3, requires_grad=True)
    y = x * 1.0  # a non-leaf, as a block output
    weights = torch.randn(2, 5, 3)
    (swap_aux_tokens_(y) * weights).sum().backward()
    expected = weights.clone()
    expected[:, [0, -1]] = weights[:, [-1, 0]]
    torch.testing.assert_close(x.grad, expected)


def test_bad_arguments():
    with pytest.raises(ValueError, match="aux_init"):
        AuxTokens(4, init="zeros")
    with pytest.raises(ValueError, match="swap_aux_tokens_"):
        swap_aux_tokens_(torch.zeros(2, 1, 3))
