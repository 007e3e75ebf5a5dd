"""QLoRA's base model: [`quantize_model()`][lego.peft.quantize.quantize_model] and re-quantizing.

``quantize_model(model)`` replaces linear layers (in place) by
[`NF4Linear`][lego.peft.nf4_linear.NF4Linear] layers holding their weights in NF4 (as
transformers' ``BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4")`` does:
by default every linear layer but the output head). [`apply_lora()`][lego.peft.apply_lora]
on the result trains adapters on the frozen 4-bit base: QLoRA.

Merging an adapter onto an NF4 base gives a higher-precision model by default
(``merge_and_unload()``: each NF4 layer becomes an ``nn.Linear`` with the dequantized
weight plus the update, nothing re-quantized). Re-quantizing the merged weights to NF4
changes them again (the loss of quality users meet when they merge QLoRA adapters), so it
happens only when asked: [`merge_and_requantize()`][lego.peft.quantize.merge_and_requantize]
returns the NF4 model with the measured error, and ``merge_and_unload(requantize=True)``
warns with it ([`RequantizationWarning`][lego.peft.quantize.RequantizationWarning])::

    >>> import torch
    >>> from torch import nn
    >>> from lego.peft import LoraConfig, NF4Linear, apply_lora
    >>> _ = torch.manual_seed(0)
    >>> model = quantize_model(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)))
    >>> [type(m).__name__ for m in model]
    ['NF4Linear', 'ReLU', 'NF4Linear']
    >>> adapted = apply_lora(model, LoraConfig(r=4, target_modules=["0"], init_lora_weights=False))
    >>> merged, report = merge_and_requantize(adapted)
    >>> isinstance(merged[0], NF4Linear), sorted(report.layers)
    (True, ['0'])
    >>> 0.0 < report.worst.relative_error < 0.2
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from lego.peft.lora import LoraEmbedding, LoraLinear
from lego.peft.model import (
    LoraModel,
    _output_heads,
    _set_submodule,
    hf_module_names,
)
from lego.peft.modules_to_save import ModulesToSaveWrapper
from lego.peft.nf4 import check_block_size, quantize_nf4
from lego.peft.nf4_linear import DEFAULT_CHUNK_VALUES, NF4Linear
from lego.peft.targets import target_matches
from lego.protocols import (
    CompatibilityError,
    ConfigError,
    DataError,
    HFNamedModel,
    check_bool,
)

__all__ = [
    "LayerError",
    "QuantizationReport",
    "RequantizationWarning",
    "merge_and_requantize",
    "quantize_model",
]


class RequantizationWarning(UserWarning):
    """Merged weights were re-quantized to NF4: the message gives the measured error."""


@dataclass(frozen=True)
class LayerError:
    """How much re-quantizing changed one merged weight ``W`` into ``Q`` (dequantized).

    Attributes:
        relative_error: ``||Q - W|| / ||W||`` (Frobenius norms; 0 for an all-zero ``W``).
        max_abs_error: ``max |Q - W|``.
    """

    relative_error: float
    max_abs_error: float


@dataclass(frozen=True)
class QuantizationReport:
    """The error re-quantization introduced, per layer.

    Attributes:
        layers: Module path -> its [`LayerError`][lego.peft.quantize.LayerError], in model
            order.
    """

    layers: dict[str, LayerError]

    @property
    def worst_layer(self) -> str | None:
        """The path of the layer with the largest relative error (None without layers)."""
        if not self.layers:
            return None
        return max(self.layers, key=lambda path: self.layers[path].relative_error)

    @property
    def worst(self) -> LayerError:
        """The largest relative error, with the largest absolute error of any layer."""
        if not self.layers:
            return LayerError(0.0, 0.0)
        worst = self.worst_layer
        assert worst is not None
        return LayerError(
            self.layers[worst].relative_error,
            max(error.max_abs_error for error in self.layers.values()),
        )

    @property
    def mean_relative_error(self) -> float:
        """The mean of the layers' relative errors (0 without layers)."""
        if not self.layers:
            return 0.0
        return sum(e.relative_error for e in self.layers.values()) / len(self.layers)

    def __str__(self) -> str:
        """One sentence: the layer count, the mean and the worst error."""
        if not self.layers:
            return "no layer was re-quantized"
        return (
            f"re-quantizing {len(self.layers)} merged layer(s) to NF4 changed their weights by "
            f"{self.mean_relative_error:.3%} on average (relative Frobenius error), at worst "
            f"{self.worst.relative_error:.3%} in {self.worst_layer}; the largest change of "
            f"one value is {self.worst.max_abs_error:.3g}"
        )


def quantize_model(
    model: nn.Module,
    *,
    target_modules: str | Sequence[str] = "all-linear",
    block_size: int = 64,
    double_quant: bool = True,
    compute_dtype: torch.dtype | None = None,
    chunk_values: int = DEFAULT_CHUNK_VALUES,
    hf_names: bool = False,
) -> nn.Module:
    """Replace linear layers of ``model`` by NF4 layers (in place): QLoRA's frozen base.

    Each selected ``nn.Linear`` (lego-arch's fused projections are ``nn.Linear`` too)
    becomes an [`NF4Linear`][lego.peft.nf4_linear.NF4Linear] with its weight quantized
    by [`quantize_nf4()`][lego.peft.nf4.quantize_nf4] (bitsandbytes' values) and its
    bias kept; one layer at a time, so the peak memory is the model plus one layer. The
    tensors left that still view a memory-mapped checkpoint file (lego-arch's ``from_hf``
    loads lazily) are then copied into memory, so that the map, and the pages of the float
    weights just quantized, are released.

    Args:
        model: Any ``nn.Module`` without adapters (quantize first, then ``apply_lora``).
        target_modules: ``"all-linear"`` (every linear layer but the output head, as
            transformers' bitsandbytes integration), a list of names (each matching a
            module whose name is that name or ends with ``"." + name``) or a regular
            expression matched against the whole name.
        block_size: Values per NF4 block (64, as QLoRA).
        double_quant: Quantize the absmax values too (~4.13 bits per weight).
        compute_dtype: The dtype the layers compute in (None: the input's).
        chunk_values: See [`NF4Linear`][lego.peft.nf4_linear.NF4Linear].
        hf_names: Match ``target_modules`` against transformers' module names (the model
            must be an [`HFNamedModel`][lego.protocols.HFNamedModel]).

    Returns:
        ``model`` itself, its selected layers replaced.

    Raises:
        ConfigError: A target matches no module, or a module that is not an ``nn.Linear``;
            the model holds adapters or NF4 layers already; a selected layer's weight is
            shared with another module (a tied output head); bad settings.
        CompatibilityError: ``hf_names`` on a model that is no ``HFNamedModel``.
        DataError: A weight has NaN or infinite values (naming it; nothing is replaced).
    """
    check_block_size(block_size, owner="quantize_model")
    check_bool("double_quant", double_quant, owner="quantize_model")
    if isinstance(model, LoraModel) or any(
        isinstance(m, (LoraLinear, LoraEmbedding, ModulesToSaveWrapper)) for m in model.modules()
    ):
        raise ConfigError(
            "quantize_model: the model holds adapters",
            hint="quantize the base model first, then apply_lora() to the quantized model",
        )
    if any(isinstance(m, NF4Linear) for m in model.modules()):
        raise ConfigError(
            "quantize_model: the model is quantized already (it holds NF4Linear layers)",
            hint="quantize a model once; NF4 weights cannot be quantized again",
        )
    paths = _select(model, target_modules, hf_names=hf_names)
    _check_not_shared(model, paths)
    for path in paths:  # checked first, so that a bad weight leaves the model as it was
        weight = model.get_submodule(path).weight
        assert isinstance(weight, Tensor)
        if not bool(torch.isfinite(weight).all()):
            raise DataError(
                f"quantize_model: the weight of {path} has NaN or infinite values",
                tensor=f"{path}.weight",
                hint="only finite weights can be quantized; check the checkpoint",
            )
    for path in paths:  # each layer replaced at once: the dense one can go
        linear = model.get_submodule(path)
        assert isinstance(linear, nn.Linear)
        layer = NF4Linear.from_linear(
            linear,
            block_size=block_size,
            double_quant=double_quant,
            chunk_values=chunk_values,
            compute_dtype=compute_dtype,
        )
        _set_submodule(model, path, layer)
    _copy_out_of_files(model)
    return model


def _file_mappings() -> list[tuple[int, int]]:
    """The address ranges this process maps from files (Linux; none found elsewhere)."""
    try:
        text = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    ranges = []
    for line in text.splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5].startswith("/"):  # a path: a file mapping
            start, _, end = fields[0].partition("-")
            ranges.append((int(start, 16), int(end, 16)))
    return ranges


def _copy_out_of_files(model: nn.Module) -> None:
    """Copy the tensors left that view a memory-mapped file into the process's own memory.

    lego-arch's ``from_hf`` (like transformers) loads lazily: each tensor is a view on the
    safetensors file's map, and the map lives as long as any view does. Quantizing reads
    every weight it replaces, so without this the pages of those float weights stay
    resident behind the few tensors left on the map (the embedding, the norms): about the
    float size of the quantized layers (measured: 1.0 GiB of a 0.5B model). Copying what
    is left releases the map and those pages with it (when nothing else holds a view).
    """
    ranges = _file_mappings()
    if not ranges:
        return

    def on_file(tensor: Tensor | None) -> bool:
        if tensor is None or tensor.device.type != "cpu" or tensor.numel() == 0:
            return False
        return any(start <= tensor.data_ptr() < end for start, end in ranges)

    for module in model.modules():
        for parameter in module._parameters.values():
            if parameter is not None and on_file(parameter):
                parameter.data = parameter.data.clone()  # the same Parameter: ties hold
        for name, buffer in module._buffers.items():
            if buffer is not None and on_file(buffer):
                module._buffers[name] = buffer.clone()


def _select(model: nn.Module, target_modules: str | Sequence[str], *, hf_names: bool) -> list[str]:
    """The paths of the linear layers ``target_modules`` selects, in model order."""
    patterns: str | list[str]
    if isinstance(target_modules, str):
        patterns = target_modules
    else:
        items = list(target_modules) if isinstance(target_modules, (list, tuple)) else None
        if items is None or not all(isinstance(t, str) for t in items):
            raise ConfigError(
                f"quantize_model: target_modules must be a string or a list of names, got "
                f"{target_modules!r}",
                key="target_modules",
                hint='pass "all-linear", a regular expression or a list of names',
            )
        if not items:
            raise ConfigError(
                "quantize_model: target_modules is empty",
                key="target_modules",
                hint='pass "all-linear" or the names of the layers to quantize',
            )
        patterns = items
    if hf_names and not isinstance(model, HFNamedModel):
        raise CompatibilityError(
            f"quantize_model: hf_names=True needs a model that knows its transformers names "
            f"(lego.protocols.HFNamedModel); a {type(model).__name__} does not",
            hint="use the model's own module names, or a lego-arch model",
        )
    names = hf_module_names(model) if hf_names else None
    heads = _output_heads(model)
    modules: list[tuple[str, str, nn.Module]] = []
    for path, module in model.named_modules():
        name = names.get(path) if names is not None else path
        if path and name is not None:
            modules.append((path, name, module))
    linear = [(p, n) for p, n, m in modules if isinstance(m, nn.Linear)]
    listed = ", ".join(sorted({n.rsplit(".", 1)[-1] for _, n in linear})) or "none"
    hint = f"the model's linear layers end with: {listed}"
    if isinstance(patterns, str) and patterns.lower() == "all-linear":
        chosen = [p for p, _, m in modules if isinstance(m, nn.Linear) and id(m) not in heads]
        if not chosen:
            raise ConfigError(
                'quantize_model: "all-linear" finds no linear layer (other than the output '
                "head) in the model",
                key="target_modules",
                hint=hint,
            )
        return chosen
    groups = [patterns] if isinstance(patterns, str) else [[p] for p in patterns]
    chosen_ids: set[str] = set()
    for group in groups:
        matched = [(p, n, m) for p, n, m in modules if target_matches(group, n)]
        label = repr(group if isinstance(group, str) else group[0])
        if not matched:
            raise ConfigError(
                f"quantize_model: target_modules {label} matches no module of the model",
                key="target_modules",
                hint=hint,
            )
        wrong = [f"{n} ({type(m).__name__})" for _, n, m in matched if not isinstance(m, nn.Linear)]
        if wrong:
            raise ConfigError(
                f"quantize_model: target_modules {label} selects modules that are not linear "
                f"layers: {', '.join(wrong[:5])}"
                + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""),
                key="target_modules",
                hint="NF4 quantizes nn.Linear layers; " + hint,
            )
        chosen_ids.update(p for p, _, _ in matched)
    return [p for p, _, _ in modules if p in chosen_ids]


def _check_not_shared(model: nn.Module, paths: list[str]) -> None:
    """Refuse to quantize a weight that another module uses too (it would be untied)."""
    owners: dict[int, int] = {}
    for _, parameter in model.named_parameters(remove_duplicate=False):
        owners[id(parameter)] = owners.get(id(parameter), 0) + 1
    shared = [p for p in paths if owners.get(id(model.get_submodule(p).weight), 0) > 1]
    if shared:
        raise ConfigError(
            f"quantize_model: the weight of {', '.join(shared)} is shared with another module "
            "(a tied output head); quantizing it would untie them",
            key="target_modules",
            hint="leave tied layers out of target_modules (the default skips the output head)",
        )


# -- re-quantizing merged weights -------------------------------------------------------------


def merge_and_requantize(adapted: LoraModel) -> tuple[nn.Module, QuantizationReport]:
    """Merge the adapters and quantize the merged NF4 layers to NF4 again, measuring the error.

    Each adapter on an [`NF4Linear`][lego.peft.nf4_linear.NF4Linear] base is merged into
    the dequantized weight (the adapter's dtype, float32 on a 4-bit base), the result is
    quantized with the base's block size and double quantization, and the change
    ``||Q - W|| / ||W||`` is measured; one layer at a time, so no full-precision copy of
    the model is made. The other adapters merge as in ``merge_and_unload()``. The
    ``LoraModel`` cannot be used afterwards.

    Args:
        adapted: A model from ``apply_lora`` / ``load_adapter`` (merged or not).

    Returns:
        ``(model, report)``: the base model (the same object) with NF4 layers holding the
        re-quantized merged weights, and the error per re-quantized layer.

    Raises:
        ConfigError: The adapters were unloaded already.
        DataError: A merged weight has NaN or infinite values (naming the layer; nothing
            is changed).
    """
    if adapted.merged:
        adapted.unmerge()
    replacements: dict[str, NF4Linear] = {}
    errors: dict[str, LayerError] = {}
    for path, layer in adapted.lora_layers.items():
        base = layer.base_layer
        if not (isinstance(layer, LoraLinear) and isinstance(base, NF4Linear)):
            continue
        merged = layer.merged_weight()  # (out, in), the adapter's dtype
        if not bool(torch.isfinite(merged).all()):
            raise DataError(
                f"merging gives non-finite weights in {path}: the adapter is broken",
                tensor=f"{path}.weight",
                hint="check the adapter's tensors for NaN or infinity (a diverged run?)",
            )
        weight = quantize_nf4(merged.to(base.dtype), base.block_size, base.double_quant)
        bias = layer.bias
        replacement = NF4Linear(
            weight=weight,
            bias=None if bias is None else bias.detach(),
            chunk_values=base.chunk_values,
            compute_dtype=base.compute_dtype,
        )
        errors[path] = _error(merged, replacement)
        replacements[path] = replacement
    for path, replacement in replacements.items():
        _set_submodule(adapted.model, path, replacement)
        del adapted.lora_layers[path]
    return adapted.merge_and_unload(), QuantizationReport(errors)


@torch.no_grad()
def _error(merged: Tensor, layer: NF4Linear) -> LayerError:
    """The change from ``merged`` to the layer's dequantized weight."""
    reference = merged.float()
    diff = layer.dequantized_weight(torch.float32) - reference
    norm = float(torch.linalg.vector_norm(reference))
    change = float(torch.linalg.vector_norm(diff))
    relative = change / norm if norm > 0 else (0.0 if change == 0 else math.inf)
    return LayerError(relative_error=relative, max_abs_error=float(diff.abs().max()))
