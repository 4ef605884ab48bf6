"""`inference.folded`: shadows computing the same function and input gradients with batch norm folded and
channels-last convolutions, the originals untouched; `inference.agrees` tells them apart from a shadow that
does not."""

import torch
from torch import nn

from src.testing.tolerance import assert_close_scaled
from src.xai.folding import agrees, folded


def _block(layer: nn.Module, norm: nn.Module) -> nn.Sequential:
    return nn.Sequential(layer, norm, nn.ReLU())


class Net(nn.Module):
    """Every case: conv + BN2d, transposed conv + BN2d, linear + BN1d (each in a Sequential), a conv
    without a norm, and a conv + BN pair outside a Sequential (custom forward: not folded)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _block(nn.Conv2d(2, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6)),
            _block(nn.Conv2d(6, 8, 3, stride=2, bias=True), nn.BatchNorm2d(8)),
            _block(nn.ConvTranspose2d(8, 4, 3, stride=2), nn.BatchNorm2d(4)),
            nn.Conv2d(4, 5, 3),
        )
        self.conv, self.norm = nn.Conv2d(5, 5, 1), nn.BatchNorm2d(5)
        self.head = nn.Sequential(nn.Flatten(), _block(nn.Linear(5 * 9 * 9, 7), nn.BatchNorm1d(7)), nn.Linear(7, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(self.features(x))
        return self.head(self.norm(y) + y)  # the conv's output is read twice: folding would change it


def _net() -> Net:
    torch.manual_seed(0)
    net = Net().double()
    for m in net.modules():  # running statistics and affine parameters far from the identity
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def _output_and_input_gradient(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().clone().requires_grad_(True)
    out = net(x)
    (g,) = torch.autograd.grad(out.pow(2).sum(), x)
    return out.detach(), g


def test_folded_models_compute_the_same_function_and_input_gradients():
    net, x = _net(), torch.randn(4, 2, 11, 11, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    want_out, want_grad = _output_and_input_gradient(net, x)
    (fast,) = folded(net)
    got_out, got_grad = _output_and_input_gradient(fast, x)
    norms = [m for m in fast.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms == [net.norm]  # the four norms inside Sequentials folded; the one read twice kept (shared)
    assert fast.features[0][0].weight.is_contiguous(memory_format=torch.channels_last)
    last = torch.channels_last  # the conv without a norm: a channels-last copy
    assert fast.features[3].weight.is_contiguous(memory_format=last)
    assert not any(p.requires_grad for p in fast.features.parameters())
    assert fast.head[2] is net.head[2]  # what is not swapped is shared, not copied
    # float64: folding reorders each unit's sums (at most 3 x 3 x 8 = 72 products per conv unit,
    # 405 per linear unit, five layers deep, gradients back through the same); a ReLU within
    # rounding distance of 0 does not occur at these random values (distance ~1e-16 vs O(1))
    assert_close_scaled(got_out, want_out, terms=5 * 405, dtype=torch.float64)
    assert_close_scaled(got_grad, want_grad, terms=2 * 5 * 405, dtype=torch.float64)
    assert not torch.equal(got_out, want_out) or not torch.equal(got_grad, want_grad)  # it did compute differently


def test_the_originals_are_untouched_and_their_checkpoints_load():
    net = _net()
    before = {name: m for name, m in net.named_modules()}
    params = {name: (p.detach().clone(), p.requires_grad) for name, p in net.named_parameters()}
    buffers = {name: b.detach().clone() for name, b in net.named_buffers()}
    (fast,) = folded(net)
    fast(torch.randn(2, 2, 11, 11, dtype=torch.float64))
    # a checkpoint written while a shadow is in use (a signal handler mid-render) holds the real model
    state = net.state_dict()
    assert {name: m for name, m in net.named_modules()} == before  # the same module objects
    for name, p in net.named_parameters():
        assert torch.equal(p, params[name][0]) and p.requires_grad == params[name][1]
        assert p.is_contiguous()  # the originals keep their memory format
    for name, b in net.named_buffers():
        assert torch.equal(b, buffers[name]) and torch.equal(state[name], b)
    _net().load_state_dict(state)  # strict: every key of the real model
    again, twice = folded(net, net)  # folding again (and twice) gives equal, independent shadows
    assert again is not fast and twice is not again and isinstance(net.features[0][1], nn.BatchNorm2d)


def test_training_mode_hooked_layers_and_plain_functions_are_left_alone():
    net = _net()
    net.features[0].train()  # this block's norm normalises by the batch: not foldable
    seen = []
    net.features[1][0].register_forward_hook(lambda m, i, o: seen.append(o))
    layers = {name: m for name, m in net.named_modules()}
    x = torch.randn(2, 2, 11, 11, dtype=torch.float64)
    function = lambda t: t  # noqa: E731
    fast, same_function, same_method = folded(net, function, net.forward)  # non-modules come back as they are
    assert same_function is function and same_method == net.forward
    inside = {name: m for name, m in fast.named_modules()}
    for name in ("features.0.0", "features.0.1", "features.1.0", "features.1.1"):
        assert inside[name] is layers[name]
    assert inside["features.2.0"] is not layers["features.2.0"]  # the eval-mode transposed block is folded
    fast(x)
    assert len(seen) == 1 and seen[0].shape == (2, 8, 5, 5)  # the hook fired on its own layer
    plain = nn.Sequential(nn.ReLU(), nn.Linear(3, 3)).eval()
    assert folded(plain)[0] is plain  # nothing to swap: the model itself


def test_bf16_autocast_through_folded_layers_stays_near_the_float32_model():
    net = _net().float()
    x = torch.randn(4, 2, 11, 11, generator=torch.Generator().manual_seed(3))
    want, _ = _output_and_input_gradient(net, x)
    (fast,) = folded(net)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, grad = _output_and_input_gradient(fast, x)
    assert got.dtype == torch.bfloat16 and grad.dtype == torch.float32
    # autocast rounds each of the 7 layers' inputs and weights to bfloat16 (8 significant bits) and
    # sums in float32: 14 roundings along the chain
    assert_close_scaled(got.float(), want, terms=14, dtype=torch.bfloat16)


def test_a_grouped_transposed_conv_keeps_its_norm():
    torch.manual_seed(0)
    net = (
        nn.Sequential(
            nn.ConvTranspose2d(4, 6, 3, groups=2), nn.BatchNorm2d(6), nn.Conv2d(6, 6, 1, groups=3), nn.BatchNorm2d(6)
        )
        .double()
        .eval()
    )
    for norm in (net[1], net[3]):
        norm.running_mean.uniform_(-1, 1)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    want = net(x)
    (fast,) = folded(net)
    assert isinstance(fast[1], nn.BatchNorm2d) and isinstance(fast[3], nn.Identity)  # a grouped conv folds
    assert_close_scaled(fast(x), want, terms=2 * 3 * 3 * 2, dtype=torch.float64)


class _Taps(nn.Module):
    """Reads a Sequential's layers one by one and keeps the conv's output: folding changes it."""

    def __init__(self) -> None:
        super().__init__()
        self.seq = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))

    def forward(self, x):
        taps = [x]
        for layer in self.seq:
            taps.append(layer(taps[-1]))
        return taps[1].sum((1, 2, 3)) + taps[2].sum((1, 2, 3))


class _Views(nn.Module):
    """Views a conv's output as [N, -1]: a channels-last output cannot be viewed so."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3)

    def forward(self, x):
        return self.conv(x).view(len(x), -1)


def test_agrees_accepts_rounding_and_rejects_a_changed_function_or_a_failing_copy():
    x = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    net, taps, views = _net().float(), _Taps().eval(), _Views().eval()
    taps.seq[1].running_mean.fill_(0.5)
    assert agrees(folded(net)[0], net, torch.randn(2, 2, 11, 11))
    assert not agrees(folded(taps)[0], taps, x)  # the conv's own output now includes the norm
    x2 = torch.rand(2, 2, 6, 6, generator=torch.Generator().manual_seed(1))
    assert not agrees(folded(views)[0], views, x2)  # .view of a channels-last tensor raises
    assert agrees(folded(views, channels_last=False)[0], views, x2)
    assert not agrees(lambda t: (t, t), lambda t: (t,), x) and not agrees(lambda t: t.double(), lambda t: t, x)


class _Patches(nn.Module):
    """Patch embedding: Flatten(2) of a conv's output, then an in-place add (as vision transformers do)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj, self.flat = nn.Conv2d(3, 8, 4, stride=4), nn.Flatten(2)
        self.pos = nn.Parameter(torch.randn(1, 16, 8, dtype=torch.float64))
        self.head = nn.Sequential(nn.Linear(8, 5), nn.BatchNorm1d(5))

    def forward(self, x):
        t = self.flat(self.proj(x)).transpose(1, 2)
        t += self.pos
        return self.head(t.mean(1))


def test_shadows_work_under_in_place_ops_torch_func_and_forward_mode():
    torch.manual_seed(0)
    patches, net = _Patches().double().eval(), _net()
    for model, x in (
        (patches, torch.randn(2, 3, 16, 16, dtype=torch.float64)),
        (net, torch.randn(2, 2, 11, 11, dtype=torch.float64)),
    ):
        (fast,) = folded(model)
        want_out, want_grad = _output_and_input_gradient(model, x)
        got_out, got_grad = _output_and_input_gradient(fast, x)  # the in-place add after Flatten(2) works
        assert_close_scaled(got_out, want_out, terms=5 * 405, dtype=torch.float64)
        assert_close_scaled(got_grad, want_grad, terms=2 * 5 * 405, dtype=torch.float64)
        # torch.func (vmap inside jacrev) and forward-mode AD through the shadow: the same derivatives
        jac = torch.func.jacrev(fast)(x)
        assert_close_scaled(jac, torch.func.jacrev(model)(x), terms=2 * 5 * 405, dtype=torch.float64)
        v = torch.randn_like(x)
        with torch.autograd.forward_ad.dual_level():
            tangent = torch.autograd.forward_ad.unpack_dual(fast(torch.autograd.forward_ad.make_dual(x, v))).tangent
        assert_close_scaled(tangent, torch.func.jvp(model, (x,), (v,))[1], terms=2 * 5 * 405, dtype=torch.float64)


def test_a_hook_on_a_shadow_stays_on_the_shadow_and_flatten_alone_is_no_reason_to_copy():
    net, calls = _net(), []
    (fast,) = folded(net)
    fast.register_forward_hook(lambda m, i, o: calls.append("shadow"))
    net(torch.randn(1, 2, 11, 11, dtype=torch.float64))
    assert calls == [] and not net._forward_hooks
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(4, 2)).eval()
    assert folded(mlp)[0] is mlp
