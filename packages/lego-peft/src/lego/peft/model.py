"""The adapted model: [`apply_lora()`][lego.peft.model.apply_lora] and its result.

[`LoraModel`][lego.peft.model.LoraModel]:

``apply_lora(model, config)`` freezes the model, replaces each target module (in place)
by a [`LoraLinear`][lego.peft.lora.LoraLinear] or [`LoraEmbedding`][lego.peft.lora.LoraEmbedding]
wrapping it, each module to save by a
[`ModulesToSaveWrapper`][lego.peft.modules_to_save.ModulesToSaveWrapper], and returns a
``LoraModel`` around it. The ``LoraModel``:

- calls like the base model, and is still a [`CausalLM`][lego.protocols.CausalLM] (and a
  [`CachedCausalLM`][lego.protocols.CachedCausalLM] when the base is one: KV-cached
  generation works unchanged);
- is an [`Adapter`][lego.protocols.Adapter]: ``merge()`` / ``unmerge()`` (bit-exact),
  ``disabled()`` (the bare base model, no copy), ``adapter_state_dict()`` with PEFT's
  keys, ``save_adapter(dir)`` in PEFT's layout;
- gives the plain model back: ``merge_and_unload()`` (adapter folded in, e.g. for
  ``lego.arch.to_hf``) or ``unload()`` (the base as it was).

Only the adapter's parameters train (plus the modules to save, plus biases with ``bias``
``"all"`` / ``"lora_only"``).

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
    >>> adapted = apply_lora(model, LoraConfig(r=2, target_modules=["0", "2"]))
    >>> sum(p.numel() for p in adapted.parameters() if p.requires_grad)  # 2 * (8 + 16) * 2
    96
    >>> x = torch.randn(4, 8)
    >>> with adapted.disabled():
    ...     base_out = adapted(x)
    >>> torch.equal(adapted(x), base_out)  # init_lora_weights=True: B starts at zero
    True
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor, nn

from lego.peft import checkpoint, peft_format
from lego.peft.config import LoraConfig
from lego.peft.lora import LoraEmbedding, LoraLayer, LoraLinear, QuantizedLinear, is_linear
from lego.peft.modules_to_save import ModulesToSaveWrapper
from lego.peft.targets import Candidate, saved_module_matches, select_targets
from lego.protocols import (
    CompatibilityError,
    ConfigError,
    HFNamedModel,
    LegoError,
    ModelConfigLike,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from lego.protocols import KVCache

__all__ = ["LoraModel", "CachedLoraModel", "apply_lora", "hf_module_names"]


class LoraModel(nn.Module):
    """A model with LoRA adapters attached: call it like the base model.

    Build it with [`apply_lora()`][lego.peft.model.apply_lora] or
    [`load_adapter()`][lego.peft.peft_format.load_adapter].

    Args:
        model: The base model, already holding the adapter layers.
        lora_config: The settings the adapters were made with.
        lora_layers: Module path (in the base model) -> its adapter layer.
        saved_modules: Module path -> its ``ModulesToSaveWrapper``.
        biases: Parameter name -> bias trained with the adapter (``bias`` setting).
        hf_names: Whether the names in ``lora_config`` are transformers' names.
        module_names: Module path -> its transformers name (None where it has none), for
            every adapted module and module to save; the path itself for a base model
            that is no ``HFNamedModel``.
        adaptable_names: The names (as in ``module_names``) of every module of the base
            model that could take an adapter, to write ``target_modules`` that select
            exactly the adapted ones.
        requires_grad: Parameter name -> whether it required gradients before
            ``apply_lora`` (restored by ``unload`` / ``merge_and_unload``).

    Attributes:
        model: The base model (with the adapter layers inside).
        lora_layers: As given.
        saved_modules: As given.
        base_model_name_or_path: The base model's directory or hub name, when known:
            recorded by ``save_adapter`` / ``save_pretrained`` (None: unknown; set it).
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        lora_config: LoraConfig,
        lora_layers: Mapping[str, LoraLayer],
        saved_modules: Mapping[str, ModulesToSaveWrapper],
        biases: Mapping[str, nn.Parameter],
        hf_names: bool,
        module_names: Mapping[str, str | None],
        adaptable_names: Sequence[str],
        requires_grad: Mapping[str, bool],
    ) -> None:
        super().__init__()
        self.model = model
        self._lora_config = lora_config
        # Plain dicts: the layers are registered once, inside ``model``.
        self.lora_layers: dict[str, LoraLayer] = dict(lora_layers)
        self.saved_modules: dict[str, ModulesToSaveWrapper] = dict(saved_modules)
        self.biases: dict[str, nn.Parameter] = dict(biases)
        self.hf_names = hf_names
        self.module_names: dict[str, str | None] = dict(module_names)
        self.adaptable_names: tuple[str, ...] = tuple(adaptable_names)
        self._requires_grad = dict(requires_grad)
        self._merge_order: list[str] = []
        self._unloaded = False
        self.base_model_name_or_path: str | None = None

    # -- CausalLM ---------------------------------------------------------------------------

    @property
    def config(self) -> ModelConfigLike:
        """The base model's configuration (``CausalLM.config``)."""
        config = getattr(self.model, "config", None)
        if config is None:
            raise AttributeError("the base model has no config")
        assert isinstance(config, ModelConfigLike)
        return config

    @property
    def lora_config(self) -> LoraConfig:
        """The adapter's settings."""
        return self._lora_config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the base model (with its adapters) with the same arguments.

        For a causal LM: ``input_ids`` ``(B, T)`` and the keywords ``attention_mask``,
        ``position_ids``, ``kv_cache``, returning logits ``(B, T, vocab_size)``.
        """
        self._check_loaded()
        return self.model(*args, **kwargs)

    # -- Adapter ----------------------------------------------------------------------------

    @property
    def adapter_config(self) -> dict[str, Any]:
        """The ``adapter_config.json`` mapping, in PEFT's vocabulary and transformers' names."""
        return peft_format.adapter_config(self)

    @property
    def merged(self) -> bool:
        """Whether the adapters are folded into the base weights."""
        return bool(self._merge_order)

    def adapter_state_dict(self) -> dict[str, Tensor]:
        """The adapter's tensors under PEFT's keys (``base_model.model.<hf name>.lora_A.weight``).

        Returns:
            Key -> tensor (detached; the modules to save in transformers' layout).
        """
        self._check_loaded()
        return peft_format.adapter_tensors(self)

    def adapter_parameters(self) -> dict[str, nn.Parameter]:
        """The trainable tensors under their PEFT keys (the same keys as ``adapter_state_dict``).

        The parameters themselves (gradients, optimizer groups by name), in the model's own
        layout: a module to save whose transformers tensor is transposed (GPT-2's
        ``Conv1D``) is not transposed here. The adapted embedding tables PEFT may save are
        not trainable and not included.

        Returns:
            PEFT key -> parameter.
        """
        self._check_loaded()
        return peft_format.adapter_parameters(self)

    def load_adapter_state_dict(self, state_dict: Mapping[str, Tensor], /) -> None:
        """Copy tensors with PEFT's keys into the adapter (every key must match).

        Args:
            state_dict: As returned by ``adapter_state_dict()`` or saved by PEFT.

        Raises:
            ConfigError: The adapter is merged.
            CompatibilityError: Unknown, missing or mis-shaped tensors (all listed).
        """
        self._check_loaded()
        if self.merged:
            raise ConfigError(
                "LoraModel: cannot load adapter weights while they are merged",
                hint="call unmerge() first",
            )
        peft_format.load_adapter_tensors(self, state_dict)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold every adapter into its base weight (``unmerge()`` restores them bit-exactly).

        Raises:
            ConfigError: Already merged.
            DataError: An adapter gives non-finite weights (naming the layer; the layers
                merged before it are unmerged again).
        """
        self._check_loaded()
        if self.merged:
            raise ConfigError(
                "LoraModel: the adapter is already merged",
                hint="check .merged first, or call unmerge() before merging again",
            )
        _warn_tied(self)
        try:
            for path, layer in self.lora_layers.items():
                try:
                    layer.merge()
                except LegoError as err:
                    raise type(err)(err.message, tensor=f"{path}.weight", hint=err.hint) from None
                self._merge_order.append(path)
        except BaseException:
            self._unmerge_all()
            raise

    @torch.no_grad()
    def unmerge(self) -> None:
        """Put back the base weights exactly as they were before ``merge()``.

        Raises:
            ConfigError: Not merged.
        """
        self._check_loaded()
        if not self.merged:
            raise ConfigError(
                "LoraModel: the adapter is not merged, there is nothing to unmerge",
                hint="check .merged first",
            )
        self._unmerge_all()

    def _unmerge_all(self) -> None:
        while self._merge_order:  # reverse order: layers may share a (tied) weight
            self.lora_layers[self._merge_order.pop()].unmerge()

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """Inside this context the model is the bare base model (no copy is made).

        Merged adapters are unmerged on entry and merged again on exit; the modules to
        save compute with their originals. (Biases trained with ``bias="all"`` or
        ``"lora_only"`` are the base's own and stay as trained, as in PEFT.)

        Yields:
            Nothing.
        """
        self._check_loaded()
        was_merged = self.merged
        if was_merged:
            self.unmerge()
        switches: list[LoraLinear | LoraEmbedding | ModulesToSaveWrapper] = [
            *self.lora_layers.values(),
            *self.saved_modules.values(),
        ]
        before = [switch.disabled for switch in switches]
        for switch in switches:
            switch.disabled = True
        try:
            yield
        finally:
            for switch, state in zip(switches, before, strict=True):
                switch.disabled = state
            if was_merged:
                self.merge()

    def save_adapter(
        self,
        path: str | os.PathLike[str],
        *,
        base_model_name_or_path: str | None = None,
    ) -> None:
        """Write ``adapter_config.json`` and ``adapter_model.safetensors`` (PEFT's layout).

        ``peft.PeftModel.from_pretrained(hf_model, path)`` loads the result, as does
        [`load_adapter()`][lego.peft.peft_format.load_adapter].

        Args:
            path: The directory (created with its parents when missing).
            base_model_name_or_path: Recorded in the config (PEFT's field), e.g. the base
                model's directory or hub name.

        Raises:
            CompatibilityError: A tensor has no transformers name, or the adapted layers
                mix layouts PEFT cannot express in one ``fan_in_fan_out``.
            ConfigError: The directory cannot be written.
        """
        self._check_loaded()
        peft_format.save_adapter(self, path, base_model_name_or_path=base_model_name_or_path)

    # -- checkpoints (lego.protocols.PretrainedModel) ------------------------------------------

    def save_pretrained(
        self, path: str | os.PathLike[str], /, *, state_dict: Mapping[str, Tensor] | None = None
    ) -> Path:
        """Write an adapter checkpoint: the adapter plus a reference to the base model.

        See `lego.peft.checkpoint`: ``adapter_config.json``,
        ``adapter_model.safetensors`` and ``base_model.json`` (``base_model_name_or_path``
        and the SHA-256 of the base weights). lego-train's checkpoints call this.

        Args:
            path: The directory (created with its parents when missing).
            state_dict: Values for the trainable parameters under ``state_dict()`` names
                (e.g. fp32 master weights); the rest is ignored.

        Returns:
            The directory.
        """
        self._check_loaded()
        return checkpoint.save_pretrained(self, path, state_dict=state_dict)

    def load_weights(self, path: str | os.PathLike[str], /) -> None:
        """Load an adapter checkpoint from ``save_pretrained`` in place, bit-exactly.

        Args:
            path: The directory.

        Raises:
            CompatibilityError: The base model is not the one the adapter was trained on
                (SHA-256), or the tensors do not fit.
        """
        self._check_loaded()
        checkpoint.load_weights(self, path)

    # -- back to a plain model ----------------------------------------------------------------

    @torch.no_grad()
    def merge_and_unload(self, *, requantize: bool = False) -> nn.Module:
        """Fold the adapters in and return the base model without any adapter module.

        Each adapted layer becomes its base layer holding the merged weight (a quantized
        base becomes an ``nn.Linear`` with the higher-precision merged weight: nothing is
        re-quantized); each module to save becomes its trained copy. The parameters'
        ``requires_grad`` flags are restored. This ``LoraModel`` cannot be used afterwards.

        Args:
            requantize: Quantize the merged weights of NF4 layers to NF4 again (see
                [`merge_and_requantize()`][lego.peft.quantize.merge_and_requantize], which
                returns the measured error); a
                [`RequantizationWarning`][lego.peft.quantize.RequantizationWarning] reports
                the error.

        Returns:
            The base model (the same object ``apply_lora`` was given).
        """
        if requantize:
            from lego.peft.quantize import (  # here: quantize imports this module
                RequantizationWarning,
                merge_and_requantize,
            )

            model, report = merge_and_requantize(self)
            warnings.warn(str(report), RequantizationWarning, stacklevel=2)
            return model
        return self._unload(merge=True)

    @torch.no_grad()
    def unload(self) -> nn.Module:
        """Remove the adapters and return the base model as it was (modules to save too).

        Returns:
            The base model (the same object ``apply_lora`` was given).
        """
        return self._unload(merge=False)

    def _unload(self, *, merge: bool) -> nn.Module:
        self._check_loaded()
        if merge and not self.merged:
            self.merge()
        if not merge and self.merged:
            self.unmerge()
        for path, layer in self.lora_layers.items():
            replacement: nn.Module = layer.base_layer
            if merge and isinstance(layer, LoraLinear) and layer.quantized:
                replacement = _dense_linear(layer)
            _set_submodule(self.model, path, replacement)
        for path, wrapper in self.saved_modules.items():
            _set_submodule(
                self.model, path, wrapper.modules_to_save if merge else wrapper.original_module
            )
        for name, parameter in self.model.named_parameters(remove_duplicate=False):
            if name in self._requires_grad:
                parameter.requires_grad_(self._requires_grad[name])
        self._merge_order.clear()
        self._unloaded = True
        return self.model

    def _check_loaded(self) -> None:
        if self._unloaded:
            raise ConfigError(
                "LoraModel: the adapters were unloaded (merge_and_unload / unload)",
                hint="use the model those calls returned, or apply the adapter again",
            )

    # -- names ------------------------------------------------------------------------------

    def hf_parameter_name(self, name: str) -> tuple[str, bool]:
        """The transformers name of a base-model parameter (the model's own name otherwise).

        Args:
            name: A parameter name of the base model as it was before ``apply_lora``.

        Returns:
            ``(hf_name, transposed)``; for a base model that is no
            [`HFNamedModel`][lego.protocols.HFNamedModel], ``(name, False)``.
        """
        if isinstance(self.model, HFNamedModel):
            return self.model.hf_parameter_name(name)
        return name, False


class CachedLoraModel(LoraModel):
    """A [`LoraModel`][lego.peft.model.LoraModel] whose base allocates a KV cache."""

    def new_kv_cache(
        self,
        batch_size: int,
        max_seq_len: int,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> KVCache:
        """The base model's cache (``CachedCausalLM.new_kv_cache``).

        Args:
            batch_size: Number of sequences decoded together.
            max_seq_len: Prompt length plus new tokens.
            dtype: Cache dtype; None means the model's.
            device: Cache device; None means the model's.

        Returns:
            An empty cache.
        """
        allocate = cast("Callable[..., KVCache]", self.model.new_kv_cache)
        return allocate(batch_size, max_seq_len, dtype=dtype, device=device)


def apply_lora(model: nn.Module, config: LoraConfig, *, hf_names: bool = False) -> LoraModel:
    """Attach LoRA adapters to ``model`` (in place) and return the adapted model.

    Args:
        model: Any ``nn.Module``, typically a [`CausalLM`][lego.protocols.CausalLM]. Its
            target modules are replaced by adapter layers wrapping them; every parameter
            it had is frozen.
        config: The adapter's settings.
        hf_names: Match ``target_modules``, ``modules_to_save``, ``rank_pattern`` and
            ``alpha_pattern`` against the modules' transformers names (``q_proj`` of
            ``model.layers.0.self_attn.q_proj``, GPT-2's ``c_attn``), as in a PEFT config;
            the model must be an [`HFNamedModel`][lego.protocols.HFNamedModel].

    Returns:
        A [`CachedLoraModel`][lego.peft.model.CachedLoraModel] when the model has
        ``new_kv_cache``, else a [`LoraModel`][lego.peft.model.LoraModel].

    Raises:
        ConfigError: A target or module to save matches nothing (the message lists what
            could match), or a target is not a linear layer or embedding; the model
            already holds adapters.
        CompatibilityError: ``hf_names`` on a model that is no ``HFNamedModel``.
    """
    if isinstance(model, LoraModel) or any(
        isinstance(m, (LoraLinear, LoraEmbedding, ModulesToSaveWrapper)) for m in model.modules()
    ):
        raise ConfigError(
            "apply_lora: the model already holds adapters",
            hint="call unload() (or merge_and_unload()) on the adapted model first",
        )
    if hf_names and not isinstance(model, HFNamedModel):
        raise CompatibilityError(
            f"apply_lora: hf_names=True needs a model that knows its transformers names "
            f"(lego.protocols.HFNamedModel); a {type(model).__name__} does not",
            hint="use the model's own module names, or a lego-arch model",
        )
    names = hf_module_names(model) if isinstance(model, HFNamedModel) else None
    candidates = _candidates(model, names if hf_names else None)
    saved = _select_saved(candidates, config.modules_to_save)
    selected = select_targets(
        candidates, config.target_modules, modules_to_save=config.modules_to_save
    )
    chosen = [c.path for c in selected] + [c.path for c in saved]
    module_names = {path: names.get(path) if names is not None else path for path in chosen}
    adaptable_names = [c.name for c in _candidates(model, names) if c.adaptable]

    requires_grad = {
        name: p.requires_grad for name, p in model.named_parameters(remove_duplicate=False)
    }
    biases = _trainable_biases(
        model, config, [c.path for c in selected], saved=[c.path for c in saved]
    )
    for parameter in model.parameters():
        parameter.requires_grad_(False)

    layers: dict[str, LoraLayer] = {}
    for candidate in selected:
        module = model.get_submodule(candidate.path)
        r, alpha = config.rank_and_alpha(candidate.name)
        layer: LoraLayer
        if isinstance(module, nn.Embedding):
            layer = LoraEmbedding(
                base_layer=module,
                r=r,
                lora_alpha=alpha,
                use_rslora=config.use_rslora,
                use_dora=config.use_dora,
                init_lora_weights=config.init_lora_weights,
            )
        else:
            layer = LoraLinear(
                base_layer=module,
                r=r,
                lora_alpha=alpha,
                lora_dropout=config.lora_dropout,
                use_rslora=config.use_rslora,
                use_dora=config.use_dora,
                init_lora_weights=config.init_lora_weights,
            )
        _set_submodule(model, candidate.path, layer)
        layers[candidate.path] = layer

    wrappers: dict[str, ModulesToSaveWrapper] = {}
    for candidate in saved:
        wrapper = ModulesToSaveWrapper(original_module=model.get_submodule(candidate.path))
        _set_submodule(model, candidate.path, wrapper)
        wrappers[candidate.path] = wrapper
    for parameter in biases.values():
        parameter.requires_grad_(True)

    cls = CachedLoraModel if callable(getattr(model, "new_kv_cache", None)) else LoraModel
    return cls(
        model=model,
        lora_config=config,
        lora_layers=layers,
        saved_modules=wrappers,
        biases=biases,
        hf_names=hf_names,
        module_names=module_names,
        adaptable_names=adaptable_names,
        requires_grad=requires_grad,
    )


def hf_module_names(model: nn.Module) -> dict[str, str | None]:
    """The transformers name of every module of an ``HFNamedModel`` (before adapting it).

    A module's name is the common dotted prefix of the transformers modules holding its
    parameters (and a quantized layer's weight buffer): GPT-2's
    ``blocks.0.attention.qkv_proj`` is ``transformer.h.0.attn.c_attn``,
    ``blocks.0`` is ``transformer.h.0``. A module with a parameter that has no
    transformers name, or with no parameter, has none (None, or left out).

    Args:
        model: The model.

    Returns:
        Module path -> name (or None).
    """
    assert isinstance(model, HFNamedModel)
    common: dict[str, list[str] | None] = {}
    names = [name for name, _ in model.named_parameters()]
    names += [  # a quantized layer's weight is a buffer (NF4Linear), named as the parameter was
        f"{path}.weight"
        for path, module in model.named_modules()
        if isinstance(module, QuantizedLinear) and f"{path}.weight" not in names
    ]
    for name in names:
        parts = name.split(".")[:-1]
        try:
            hf_name, _ = model.hf_parameter_name(name)
            parent: list[str] | None = hf_name.split(".")[:-1]
        except LegoError:
            parent = None
        for depth in range(1, len(parts) + 1):
            path = ".".join(parts[:depth])
            if path not in common:
                common[path] = parent
                continue
            known = common[path]
            if known is None or parent is None:
                common[path] = None
                continue
            n = 0
            while n < min(len(known), len(parent)) and known[n] == parent[n]:
                n += 1
            common[path] = known[:n]
    return {
        path: ".".join(parts) or None if parts is not None else None
        for path, parts in common.items()
    }


def _output_heads(model: nn.Module) -> set[int]:
    """Ids of the output head: ``get_output_embeddings()``, ``lm_head``, or the vocab projection."""
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        head = getter()
        if isinstance(head, nn.Module):
            return {id(head)}
    head = getattr(model, "lm_head", None)
    if isinstance(head, nn.Module):
        return {id(head)}
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab, int):
        return {
            id(m)
            for m in model.modules()
            if is_linear(m) and getattr(m, "out_features", None) == vocab
        }
    return set()


def _candidates(model: nn.Module, names: Mapping[str, str | None] | None) -> list[Candidate]:
    heads = _output_heads(model)
    found: list[Candidate] = []
    for path, module in model.named_modules():
        if not path:
            continue
        name = names.get(path) if names is not None else path
        if name is None:
            continue
        linear = is_linear(module)
        found.append(
            Candidate(
                path=path,
                name=name,
                kind=type(module).__name__,
                adaptable=linear or isinstance(module, nn.Embedding),
                linear=linear and id(module) not in heads,
            )
        )
    return found


def _select_saved(
    candidates: list[Candidate], modules_to_save: tuple[str, ...] | None
) -> list[Candidate]:
    if not modules_to_save:
        return []
    chosen: list[Candidate] = []
    for saved in modules_to_save:
        matched = [c for c in candidates if saved_module_matches([saved], c.name)]
        if not matched:
            names = sorted({c.name.rsplit(".", 1)[-1] for c in candidates})
            raise ConfigError(
                f"modules_to_save: {saved!r} matches no module of the model",
                key="modules_to_save",
                hint=f"module names end with one of: {', '.join(names)}",
            )
        chosen += [c for c in matched if c not in chosen]
    # a module inside another module to save is saved with it
    paths = [c.path for c in chosen]
    return [c for c in chosen if not any(c.path.startswith(p + ".") for p in paths)]


def _trainable_biases(
    model: nn.Module, config: LoraConfig, targets: list[str], *, saved: list[str]
) -> dict[str, nn.Parameter]:
    if config.bias == "none":
        return {}
    found: dict[str, nn.Parameter] = {}
    for name, parameter in model.named_parameters():
        if not (name == "bias" or name.endswith(".bias")):
            continue
        owner = name[: -len(".bias")] if name.endswith(".bias") else ""
        if any(name.startswith(path + ".") for path in saved):
            continue  # trained (and saved) with its module
        if config.bias == "all" or owner in targets:
            found[name] = parameter
    return found


def _warn_tied(model: LoraModel) -> None:
    """Warn when merging changes a weight another module shares (a tied output head)."""
    counts: dict[int, int] = {}
    for _, parameter in model.model.named_parameters(remove_duplicate=False):
        counts[id(parameter)] = counts.get(id(parameter), 0) + 1
    shared = [
        path for path, layer in model.lora_layers.items() if counts.get(id(layer.weight), 0) > 1
    ]
    if shared:
        warnings.warn(
            f"merging the adapter of {', '.join(shared)} changes a weight other modules share "
            "(a tied output head): the merged model computes differently from the adapted "
            "one, as in PEFT",
            stacklevel=3,
        )


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, leaf = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, leaf, module)


def _dense_linear(layer: LoraLinear) -> nn.Linear:
    """An ``nn.Linear`` holding a merged quantized layer's higher-precision weight."""
    weight = layer._merged_weight
    assert weight is not None
    assert isinstance(layer.base_layer, QuantizedLinear)
    bias = layer.bias
    linear = nn.Linear(layer.in_features, layer.out_features, bias=bias is not None, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().to(weight.dtype), requires_grad=False)
    return linear
