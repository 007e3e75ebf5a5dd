"""lego-generate's compiled decode step on a lego-arch model: one graph, the same tokens."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lego.arch import build, to_hf
from lego.generate import generate
from lego.generate.native import kernels, native_status
from lego.protocols.layout import MODEL_DIR


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("run") / MODEL_DIR
    to_hf(build("gpt2-tiny", vocab_size=50257), folder)
    return folder


@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compiled_decode_step_gives_the_same_tokens(model_dir: Path) -> None:
    from torch._dynamo.utils import counters

    from lego.arch import from_hf

    model = from_hf(model_dir)
    ids = torch.randint(0, 50257, (2, 5))
    plain = generate(model, ids, max_new_tokens=12)
    torch._dynamo.reset()
    counters.clear()
    calls = 0
    operator = kernels.kernel_for  # run by each call of torch.ops.lego.skinny_linear

    def counted(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return operator(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(kernels, "kernel_for", counted)
        compiled = generate(model, ids, max_new_tokens=12, compile=True)
    assert torch.equal(plain, compiled)
    # One graph for every cache length: a step recompiled per length would make 8 graphs
    # here (dynamo's recompile limit) and then fall back to eager.
    assert counters["stats"]["unique_graphs"] == 1
    if native_status().available:  # the compiled steps call the native kernels
        linears = sum(isinstance(m, torch.nn.Linear) for m in model.modules())
        assert calls > 2 * linears  # more than decode_linears' one preparation per layer
