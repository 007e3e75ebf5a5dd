from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from lego.layers import MLP, GatedMLP, GeGLU, SwiGLU
from lego.protocols import ConfigError, DataError, FeedForward


@pytest.mark.parametrize(
    "make",
    [
        lambda: MLP.build(d_model=8, d_ff=32),
        lambda: GatedMLP.build(d_model=8, d_ff=16),
        lambda: SwiGLU.build(d_model=8, d_ff=16),
        lambda: GeGLU.build(d_model=8, d_ff=16),
    ],
)
def test_feedforwards_satisfy_the_protocol(make: Callable[[], torch.nn.Module]) -> None:
    ffn = make()
    assert isinstance(ffn, FeedForward)
    assert ffn(torch.randn(2, 3, 8)).shape == (2, 3, 8)


def test_mlp_is_gpt2s_mlp(dtype: torch.dtype, assert_close: Callable[..., None]) -> None:
    mlp = MLP.build(d_model=8, d_ff=32).to(dtype)
    x = torch.randn(2, 5, 8).to(dtype)
    x64 = x.double()
    h = x64 @ mlp.fc.weight.double().T + mlp.fc.bias.double()
    h = 0.5 * h * (1 + torch.tanh((2 / torch.pi) ** 0.5 * (h + 0.044715 * h**3)))
    expected = h @ mlp.proj.weight.double().T + mlp.proj.bias.double()
    y = mlp(x)
    assert y.dtype == dtype
    assert_close(y, expected)


def test_mlp_without_bias_and_other_activation() -> None:
    mlp = MLP.build(d_model=4, d_ff=6, activation="relu", bias=False)
    assert mlp.fc.bias is None
    assert mlp.proj.bias is None
    x = torch.randn(3, 4)
    torch.testing.assert_close(mlp(x), F.relu(x @ mlp.fc.weight.T) @ mlp.proj.weight.T)


def test_swiglu_by_formula(dtype: torch.dtype, assert_close: Callable[..., None]) -> None:
    ffn = SwiGLU.build(d_model=8, d_ff=12).to(dtype)
    x = torch.randn(2, 4, 8).to(dtype)
    x64 = x.double()
    gate = x64 @ ffn.gate_proj.weight.double().T
    up = x64 @ ffn.up_proj.weight.double().T
    expected = (gate * torch.sigmoid(gate) * up) @ ffn.down_proj.weight.double().T
    assert_close(ffn(x), expected)
    assert ffn.gate_proj.bias is None


@pytest.mark.parametrize(("approximate", "name"), [(True, "gelu_tanh"), (False, "gelu")])
def test_geglu_by_formula(approximate: bool, name: str) -> None:
    ffn = GeGLU.build(d_model=6, d_ff=10, activation=None if approximate else "gelu")
    assert ffn.activation == name
    x = torch.randn(3, 6, dtype=torch.float64)
    ffn = ffn.double()
    gelu = F.gelu(x @ ffn.gate_proj.weight.T, approximate="tanh" if approximate else "none")
    torch.testing.assert_close(ffn(x), (gelu * (x @ ffn.up_proj.weight.T)) @ ffn.down_proj.weight.T)


def test_gated_mlp_state_dict_names_are_llamas() -> None:
    keys = set(GatedMLP.build(d_model=4, d_ff=8).state_dict())
    assert keys == {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}
    assert set(MLP.build(d_model=4, d_ff=8).state_dict()) == {
        "fc.weight",
        "fc.bias",
        "proj.weight",
        "proj.bias",
    }


def test_gated_mlp_gradcheck() -> None:
    ffn = GatedMLP.build(d_model=4, d_ff=6, activation="silu", bias=True).double()
    x = torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ffn(t), (x,))


def test_dropout_only_in_training() -> None:
    mlp = MLP.build(d_model=8, d_ff=16, dropout=0.5)
    x = torch.randn(4, 8)
    mlp.eval()
    torch.testing.assert_close(mlp(x), mlp(x))
    mlp.train()
    assert (mlp(x) == 0).any()


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda: MLP.build(d_model=8, d_ff=0), "d_ff"),
        (lambda: MLP.build(d_model=0, d_ff=4), "d_model"),
        (lambda: MLP.build(d_model=8, d_ff=4, activation="gelu_tan"), "activation"),
        (lambda: MLP.build(d_model=8, d_ff=4, dropout=1.0), "dropout"),
        (lambda: GatedMLP.build(d_model=8, d_ff=-1), "d_ff"),
        (lambda: GatedMLP.build(d_model=8, d_ff=4, activation="swiglu"), "activation"),
        (lambda: SwiGLU.build(d_model=8, d_ff=0), "d_ff"),
        (lambda: SwiGLU.build(d_model=8, d_ff=4, activation="gelu"), "activation"),
        (lambda: GeGLU.build(d_model=8, d_ff=4, activation="silu"), "activation"),
        (lambda: MLP(fc=nn.Linear(8, 4), proj=nn.Linear(5, 8)), "fc"),
        (lambda: MLP(fc=nn.Linear(8, 4), proj=nn.Linear(4, 6)), "fc"),
        (
            lambda: GatedMLP(
                gate_proj=nn.Linear(8, 4), up_proj=nn.Linear(8, 5), down_proj=nn.Linear(4, 8)
            ),
            "gate_proj",
        ),
    ],
)
def test_bad_config_names_the_value(make: Callable[[], object], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.key == key


def test_unknown_activation_hint() -> None:
    with pytest.raises(ConfigError, match="did you mean 'gelu_tanh'"):
        MLP.build(d_model=8, d_ff=4, activation="gelu_tan")


def test_wrong_width_is_a_data_error() -> None:
    with pytest.raises(DataError, match="last dimension 8"):
        SwiGLU.build(d_model=8, d_ff=4)(torch.randn(2, 3, 7))


def test_constructors_take_the_projection_modules() -> None:
    """The projections are sub-modules given by the caller (any module), as the attention's."""
    fc, proj = nn.Linear(8, 16), nn.Linear(16, 8)
    mlp = MLP(fc=fc, proj=proj, activation="relu")
    assert mlp.fc is fc
    assert mlp.proj is proj
    assert (mlp.d_model, mlp.d_ff) == (8, 16)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(mlp(x), proj(F.relu(fc(x))))
    gate, up, down = (nn.Linear(8, 12, bias=False), nn.Linear(8, 12, bias=False), nn.Linear(12, 8))
    ffn = SwiGLU(gate_proj=gate, up_proj=up, down_proj=down)
    assert ffn.activation == "silu"
    assert isinstance(ffn, GatedMLP)
    torch.testing.assert_close(ffn(x), down(F.silu(gate(x)) * up(x)))


def test_projections_without_sizes_skip_the_width_check() -> None:
    """Modules that do not tell their sizes (no in/out_features) are taken as they are."""
    seq = nn.Sequential(nn.Linear(8, 16))
    mlp = MLP(fc=seq, proj=nn.Sequential(nn.Linear(16, 8)))
    assert mlp.d_model is None
    assert mlp.d_ff is None
    assert mlp(torch.randn(3, 8)).shape == (3, 8)


def test_build_places_and_types_the_parameters() -> None:
    ffn = GatedMLP.build(d_model=4, d_ff=6, device="meta", dtype=torch.bfloat16)
    assert {(p.device.type, p.dtype) for p in ffn.parameters()} == {("meta", torch.bfloat16)}
    assert type(SwiGLU.build(d_model=4, d_ff=6)) is SwiGLU
    assert GeGLU.build(d_model=4, d_ff=6).activation == "gelu_tanh"
