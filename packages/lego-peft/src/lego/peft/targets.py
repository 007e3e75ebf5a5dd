"""Which modules a ``target_modules`` value selects, by PEFT's rules.

- a list of names: a module matches a name when its own name is that name or ends with
  ``"." + name`` (``"q_proj"`` matches ``blocks.0.attention.q_proj``);
- a string: a regular expression matched against the whole module name (``re.fullmatch``);
- ``"all-linear"``: every linear layer but the output head.

Modules named in ``modules_to_save`` never get an adapter (PEFT's rule). A name that
matches nothing, or a module that cannot carry an adapter, is a ``ConfigError`` that lists
what could have matched::

    >>> layers = [
    ...     Candidate(path="blocks.0.q_proj", name="blocks.0.q_proj", kind="Linear",
    ...               adaptable=True, linear=True),
    ...     Candidate(path="lm_head", name="lm_head", kind="Linear", adaptable=True, linear=False),
    ... ]
    >>> [c.path for c in select_targets(layers, ["q_proj"])]
    ['blocks.0.q_proj']
    >>> [c.path for c in select_targets(layers, "all-linear")]
    ['blocks.0.q_proj']
    >>> select_targets(layers, ["o_proj"])
    Traceback (most recent call last):
    ...
    lego.protocols.errors.ConfigError: target_modules: 'o_proj' matches no module of the model
      where: key 'target_modules'
      what to do: modules that can take an adapter: lm_head, q_proj (e.g. blocks.0.q_proj)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from lego.protocols import ConfigError

__all__ = ["Candidate", "select_targets", "target_matches", "saved_module_matches"]


@dataclass(frozen=True)
class Candidate:
    """One module of the model, as target matching sees it.

    Attributes:
        path: The module's name in the model (``model.get_submodule(path)``).
        name: The name the patterns are matched against: ``path``, or the module's name
            in transformers (``model.layers.0.self_attn.q_proj``).
        kind: Its class name, for messages.
        adaptable: Whether it can carry an adapter (a linear layer or an embedding).
        linear: Whether ``"all-linear"`` selects it (a linear layer, not the output head).
    """

    path: str
    name: str
    kind: str
    adaptable: bool
    linear: bool


def target_matches(target_modules: str | Sequence[str], name: str) -> bool:
    """Whether ``target_modules`` (a regex or a list of names) selects the module ``name``.

    Args:
        target_modules: A regular expression (matched against the whole name) or names
            (each matching itself or a dot-separated tail).
        name: A module name.

    Returns:
        True when it matches. (``"all-linear"`` is not a pattern: see ``select_targets``.)
    """
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == target or name.endswith("." + target) for target in target_modules)


def saved_module_matches(modules_to_save: Sequence[str], name: str) -> bool:
    """PEFT's rule for ``modules_to_save``: the module's name ends with one of the names.

    Args:
        modules_to_save: Module names.
        name: A module name.

    Returns:
        Whether the module is one to train in full.
    """
    return any(name.endswith(saved) for saved in modules_to_save)


def _excluded_by_saved(modules_to_save: Sequence[str], name: str) -> bool:
    """PEFT's rule: no adapter on a module to save or inside one."""
    return any(
        re.match(rf"(^|.*\.){re.escape(saved)}($|\..*)", name) is not None
        for saved in modules_to_save
    )


def select_targets(
    candidates: Sequence[Candidate],
    target_modules: str | Sequence[str],
    *,
    modules_to_save: Sequence[str] | None = None,
) -> list[Candidate]:
    """The modules ``target_modules`` selects, in the order of ``candidates``.

    Args:
        candidates: Every named module of the model.
        target_modules: A list of names, a regular expression or ``"all-linear"``.
        modules_to_save: Modules trained in full, which never get an adapter.

    Returns:
        The selected modules (each adaptable).

    Raises:
        ConfigError: A name (or the pattern) matches no module (the message lists the
            modules that can take an adapter), or selects a module that cannot take one
            (naming it and its class).
    """
    saved = tuple(modules_to_save or ())
    pool = [c for c in candidates if not _excluded_by_saved(saved, c.name)]
    if isinstance(target_modules, str) and target_modules.lower() == "all-linear":
        chosen = [c for c in pool if c.linear]
        if not chosen:
            raise ConfigError(
                'target_modules: "all-linear" finds no linear layer (other than the output '
                "head) in the model",
                key="target_modules",
                hint=_could_match(candidates),
            )
        return chosen
    if isinstance(target_modules, str):
        groups = [
            (repr(target_modules), [c for c in pool if target_matches(target_modules, c.name)])
        ]
    else:
        groups = [
            (repr(target), [c for c in pool if target_matches([target], c.name)])
            for target in target_modules
        ]
    for label, matched in groups:
        if not matched:
            raise ConfigError(
                f"target_modules: {label} matches no module of the model",
                key="target_modules",
                hint=_could_match(candidates),
            )
        wrong = [c for c in matched if not c.adaptable]
        if wrong:
            listed = ", ".join(f"{c.name} ({c.kind})" for c in wrong[:5])
            raise ConfigError(
                f"target_modules: {label} selects modules that cannot take an adapter: {listed}"
                + (f" and {len(wrong) - 5} more" if len(wrong) > 5 else ""),
                key="target_modules",
                hint="LoRA adapts linear layers and embeddings; " + _could_match(candidates),
            )
    selected = {id(c) for _, matched in groups for c in matched}
    return [c for c in pool if id(c) in selected]


def _could_match(candidates: Sequence[Candidate]) -> str:
    """The adaptable modules, by their last name, with one full name each."""
    examples: dict[str, str] = {}
    for c in candidates:
        if c.adaptable:
            examples.setdefault(c.name.rsplit(".", 1)[-1], c.name)
    if not examples:
        return "the model has no linear layer or embedding"
    listed = ", ".join(
        leaf if full == leaf else f"{leaf} (e.g. {full})" for leaf, full in sorted(examples.items())
    )
    return f"modules that can take an adapter: {listed}"
