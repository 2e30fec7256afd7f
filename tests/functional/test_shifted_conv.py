"""One-input-channel convolutions as shifted sums, and the compiled query pass that uses them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lit_meta.functional import query_forward, shifted_conv
from lit_meta.functional.shifted_conv import ShiftedSingleChannelConv, shifted_conv2d


@pytest.mark.parametrize(
    ("kernel", "padding"), [((3, 3), (1, 1)), ((3, 3), (0, 0)), ((5, 3), (2, 0)), ((1, 1), (0, 0))]
)
@pytest.mark.parametrize("bias", [True, False])
def test_shifted_sum_equals_conv2d_with_its_gradients(kernel, padding, bias):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(3, 1, 9, 8, dtype=torch.float64, generator=generator, requires_grad=True)
    w = torch.randn(4, 1, *kernel, dtype=torch.float64, generator=generator, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, generator=generator, requires_grad=True) if bias else None
    inputs = [t for t in (x, w, b) if t is not None]
    expected = F.conv2d(x, w, b, padding=padding)
    actual = shifted_conv2d(x, w, b, padding)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
    probe = torch.randn_like(expected)
    got = torch.autograd.grad((actual * probe).sum(), inputs)
    want = torch.autograd.grad((expected * probe).sum(), inputs)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_the_mode_rewrites_exactly_the_single_channel_stride_1_convolutions(monkeypatch):
    rewritten = []
    real = shifted_conv.shifted_conv2d

    def spy(x, weight, bias, padding):
        rewritten.append((tuple(weight.shape), padding))
        return real(x, weight, bias, padding)

    monkeypatch.setattr(shifted_conv, "shifted_conv2d", spy)
    x1, x3 = torch.randn(2, 1, 10, 10), torch.randn(2, 3, 10, 10)
    calls = {
        "nn.Conv2d, 1 channel": lambda: nn.Conv2d(1, 4, 3, padding=1)(x1),
        "keywords": lambda: F.conv2d(x1, torch.randn(4, 1, 3, 3), bias=None, padding=(2, 1)),
        "3 channels": lambda: nn.Conv2d(3, 4, 3, padding=1)(x3),
        "stride 2": lambda: nn.Conv2d(1, 4, 3, stride=2)(x1),
        "dilation 2": lambda: nn.Conv2d(1, 4, 3, dilation=2)(x1),
        "padding='same'": lambda: nn.Conv2d(1, 4, 3, padding="same")(x1),
        "7x7 kernel": lambda: nn.Conv2d(1, 4, 7)(x1),
        "depthwise": lambda: nn.Conv2d(3, 3, 3, groups=3)(x3),
    }
    for name, call in calls.items():
        torch.manual_seed(0)
        expected = call()
        torch.manual_seed(0)
        with ShiftedSingleChannelConv():
            actual = call()
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5, msg=name)
    assert rewritten == [((4, 1, 3, 3), (1, 1)), ((4, 1, 3, 3), (2, 1))]
    with torch.autocast("cpu", dtype=torch.bfloat16), ShiftedSingleChannelConv():
        assert nn.Conv2d(1, 4, 3)(x1).dtype == torch.bfloat16  # autocast's convolution, not rewritten
    assert len(rewritten) == 2
    for x, w in ((x1.double(), torch.randn(4, 1, 3, 3)), (torch.randn(2, 3, 10, 10), torch.randn(4, 1, 3, 3))):
        with pytest.raises(RuntimeError), ShiftedSingleChannelConv():
            F.conv2d(x, w)  # mismatched dtypes or channels: conv2d's own error, as without the mode
    assert len(rewritten) == 2


def test_the_compiled_query_pass_does_not_store_the_single_channel_convolution_output():
    """What Omniglot's first layer gains: Inductor fuses the shifted sum into the BatchNorm
    after it, so neither the convolution's output nor a copy is saved for backward."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(256, 3)
    )
    params = {name: p.detach().requires_grad_() for name, p in net.named_parameters()}
    buffers = {"1.running_mean": None, "1.running_var": None}
    x, y = torch.randn(12, 1, 8, 8), torch.arange(3).repeat(4)
    conv_output_bytes = 12 * 16 * 8 * 8 * 4
    results = {}
    for compile in (False, True):
        forward = query_forward(net, F.cross_entropy, compile=compile)
        saved: dict[int, int] = {}

        def pack(tensor, saved=saved):
            saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            _, loss = forward(params, buffers, x, y)
        results[compile] = (loss.detach(), torch.autograd.grad(loss, list(params.values())), saved)
    assert max(results[False][2].values()) >= conv_output_bytes  # eager keeps the convolution's output
    assert max(results[True][2].values()) < conv_output_bytes / 2  # compiled keeps at most the pooled quarter
    torch.testing.assert_close(results[True][0], results[False][0], rtol=1e-5, atol=0)
    scale = max(float(g.abs().max()) for g in results[False][1])
    for compiled, eager in zip(results[True][1], results[False][1], strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5 * scale)
