"""The recipes' token data: a prepared directory, or a corpus prepared once and cached.

[`prepare_data()`][lego.recipes.datacache.prepare_data] returns the
[`PreparedData`][lego.recipes.datacache.PreparedData] of a ``data:`` section. For
``data.corpus`` the first run trains a RegexBPE tokenizer on the corpus and prepares the
token files into ``CACHE/train-data/<corpus>-<hash of the settings>/``; later runs reuse it.

The cache never holds half an entry: an entry is built in a temporary folder named after
this host and process ([`lego.protocols.temporary_name()`][lego.protocols.temporary_name])
and renamed into place when complete. Two processes preparing the same entry both finish;
the second keeps the first one's. The temporary folders of killed processes are removed by
the next run
([`lego.protocols.remove_stale_temporaries()`][lego.protocols.remove_stale_temporaries]).
An entry is checked before use (its ``meta.json`` and tokenizer must load and agree): a
damaged one is rebuilt, with a line on stderr. A cache folder that cannot be written (full,
read-only) is one [`ConfigError`][lego.protocols.ConfigError] that names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import lego.data
import lego.tokenize
from lego.data.prepare import prepare
from lego.protocols import (
    ConfigError,
    LegoError,
    atomic_write_text,
    remove_stale_temporaries,
    temporary_name,
    write_errors,
)
from lego.protocols.locks import pid_alive

if TYPE_CHECKING:
    from lego.recipes.pretrain import DataSpec

__all__ = ["PreparedData", "prepare_data", "default_cache_dir", "cache_entry"]

_SETTINGS_FILE = "settings.json"
_LEGACY_TEMP = re.compile(r"\.tmp-.+-(?P<pid>\d+)")  # names before 0.2: no host in them


def default_cache_dir() -> Path:
    """``$LEGO_CACHE_DIR``, else ``~/.cache/lego``."""
    env = os.environ.get("LEGO_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "lego"


@dataclass(frozen=True)
class PreparedData:
    """A prepared token directory and its tokenizer.

    Attributes:
        path: The directory with ``meta.json``, ``train.bin``, ``val.bin``.
        tokenizer_file: The tokenizer file, or None when unknown.
        tokenizer_spec: What ``data.tokenizer`` named when it is not a file (e.g.
            ``tiktoken:gpt2``), else None.
    """

    path: Path
    tokenizer_file: Path | None
    tokenizer_spec: str | None = None


def _settings(spec: DataSpec) -> dict[str, object]:
    return {
        "corpus": spec.corpus,
        "vocab_size": spec.vocab_size,
        "pattern": spec.pattern,
        "val_fraction": spec.val_fraction,
        "tokenizer": "regex_bpe",
        "recipe_version": 1,
    }


def cache_entry(spec: DataSpec) -> Path:
    """The cache folder of a ``data.corpus`` section (keyed by a hash of its settings).

    Args:
        spec: The data section (with ``corpus``).

    Returns:
        ``CACHE/train-data/<corpus>-<16 hex digits>`` (it may not exist yet).
    """
    key = hashlib.sha256(json.dumps(_settings(spec), sort_keys=True).encode()).hexdigest()[:16]
    root = Path(spec.cache_dir).expanduser() if spec.cache_dir else default_cache_dir()
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in spec.corpus)[:40]
    return root / "train-data" / f"{safe}-{key}"


def prepare_data(spec: DataSpec, *, progress: bool = False) -> PreparedData:
    """Find or build the token data of ``spec`` (training a tokenizer for a corpus).

    Args:
        spec: The data section.
        progress: Show progress while preparing.

    Returns:
        The prepared data.

    Raises:
        ConfigError: A path that does not exist or is not a prepared directory; a cache
            folder that cannot be written (full, read-only).
    """
    if spec.path:
        path = Path(spec.path)
        if not (path / "meta.json").is_file():
            raise ConfigError(
                "data.path is not a prepared directory (no meta.json)",
                path=path,
                key="data.path",
                hint="run lego-data prepare first, or use data.corpus",
            )
        if not spec.tokenizer:
            return PreparedData(path=path, tokenizer_file=None)
        file = Path(spec.tokenizer)
        if file.is_file():
            return PreparedData(path=path, tokenizer_file=file)
        return PreparedData(path=path, tokenizer_file=None, tokenizer_spec=spec.tokenizer)
    folder = cache_entry(spec)
    if _usable(folder):
        return PreparedData(path=folder, tokenizer_file=folder / "tokenizer.json")
    hint = (
        "free some space in the cache folder (or make it writable), or point "
        "data.cache_dir (or $LEGO_CACHE_DIR) at another folder"
    )
    try:
        with write_errors(folder.parent, what="prepared-data cache", hint=hint):
            _build(spec, folder, progress=progress)
    except ConfigError as exc:
        if not exc.message.startswith("cannot write the "):  # write_errors' message
            raise
        # lego-data names its temporary folder, which is gone by now: name the cache
        raise ConfigError(exc.message, path=folder.parent, key="data.cache_dir", hint=hint) from exc
    return PreparedData(path=folder, tokenizer_file=folder / "tokenizer.json")


def _usable(folder: Path) -> bool:
    """Whether a cache entry is complete and sound; a damaged one is removed (with a note)."""
    if not folder.exists():
        return False
    try:
        meta = lego.data.read_meta(folder)
        tokenizer = lego.tokenize.load(folder / "tokenizer.json")
        meta.check_tokenizer(tokenizer.vocab_size, meta.eot_id)
    except LegoError as exc:
        print(
            f"note: the cached data in {folder} is damaged ({exc.message}); preparing it again",
            file=sys.stderr,
            flush=True,
        )
        aside = temporary_name(folder)
        with contextlib.suppress(OSError):
            folder.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        return False
    return True


def _remove_dead_temporaries(folder: Path) -> None:
    """The temporary folders of killed processes (this host), old names included."""
    remove_stale_temporaries(folder)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return
    for entry in entries:
        match = _LEGACY_TEMP.fullmatch(entry.name)
        if match is not None and entry.is_dir() and not pid_alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)


def _build(spec: DataSpec, folder: Path, *, progress: bool) -> None:
    """Train the tokenizer and prepare the corpus into ``folder``, atomically."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temporaries(folder.parent)
    tmp = temporary_name(folder)
    tmp.mkdir()
    try:
        corpus = lego.data.get_corpus(spec.corpus)
        tokenizer = lego.tokenize.RegexBPETokenizer(pattern=spec.pattern)
        tokenizer.train(
            list(corpus), spec.vocab_size, special_tokens=["<|endoftext|>"], verbose=progress
        )
        tokenizer.save(tmp / "tokenizer.json")
        for extra in tmp.glob("*.vocab"):
            extra.unlink()  # lego-tokenize's human-readable dump: not part of the entry
        prepare(
            corpus,
            str(tmp / "tokenizer.json"),
            tmp,
            val_fraction=spec.val_fraction,
            progress=progress,
        )
        settings = json.dumps(_settings(spec), indent=2) + "\n"
        atomic_write_text(tmp / _SETTINGS_FILE, settings, what="cache settings")
        try:
            tmp.rename(folder)
        except OSError:
            if not _usable(folder):  # not another process's finished entry: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
