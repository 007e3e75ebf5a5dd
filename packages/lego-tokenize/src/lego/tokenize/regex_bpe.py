"""Byte-level BPE with a regex split: GPT-2 / GPT-4 / LLaMA 3 style, tiktoken-compatible.

Text is split into pre-tokens with a pattern (see
[`lego.tokenize.patterns`][lego.tokenize.patterns]), each pre-token's UTF-8 bytes are
merged with tiktoken's rule, and special tokens follow tiktoken's ``allowed_special`` /
``disallowed_special`` rules. Encoding runs in tiktoken's
Rust engine by default (``engine="tiktoken"``); ``engine="python"`` selects the readable
pure-Python encoder, which gives identical ids.

Example:
    >>> tok = RegexBPETokenizer("gpt4")
    >>> tok.train(["some text", "more text"], vocab_size=266)
    >>> tok.decode(tok.encode("some more text"))
    'some more text'
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from lego.protocols import ConfigError, check_int, did_you_mean
from lego.tokenize.bpe import PythonEncoder
from lego.tokenize.bpe_base import ByteLevelBPETokenizer, validate_ranks
from lego.tokenize.fileformat import FieldReader
from lego.tokenize.patterns import pattern_name, resolve_pattern
from lego.tokenize.specials import (
    AllowedSpecial,
    DisallowedSpecial,
    check_disallowed,
    resolve_special_sets,
    validate_special_tokens,
)

if TYPE_CHECKING:
    import tiktoken

__all__ = ["Engine", "RegexBPETokenizer"]

Engine = Literal["tiktoken", "python"]
"""Which encoder runs: tiktoken's Rust engine or the pure-Python reference."""
_ENGINES = ("tiktoken", "python")


def _check_engine(engine: str) -> Engine:
    if engine not in _ENGINES:
        raise ConfigError(
            f"unknown encoder engine {engine!r}",
            key="engine",
            hint=did_you_mean(str(engine), _ENGINES),
        )
    return engine  # type: ignore[return-value]


class RegexBPETokenizer(ByteLevelBPETokenizer):
    """Byte-level BPE with a split pattern: the GPT-2 / GPT-4 / LLaMA 3 family.

    Untrained, it holds the 256 single bytes (id = byte value). Its data model is
    tiktoken's: ``mergeable_ranks`` (token bytes to ids ``0 .. n-1``), ``pattern`` and
    ``special_tokens``.

    Args:
        pattern: A pattern name (``"gpt2"``, ``"gpt4"``, ``"o200k"``, ``"llama3"``) or a
            regular expression (``regex`` syntax).
        special_tokens: Special-token strings to ids (from 256 on).
        engine: ``"tiktoken"`` (fast, default) or ``"python"`` (the readable reference).
        name: The encoding's name (shown by ``to_tiktoken()`` and stored in files).

    Raises:
        ConfigError: On an unknown pattern name, a regex that does not compile, an unknown
            engine or invalid special tokens.
    """

    type_name: ClassVar[str] = "regex_bpe"

    def __init__(
        self,
        pattern: str = "gpt4",
        *,
        special_tokens: Mapping[str, int] | None = None,
        engine: Engine = "tiktoken",
        name: str | None = None,
    ) -> None:
        self._pattern = resolve_pattern(pattern)
        self._engine: Engine = _check_engine(engine)
        self._name = name
        self._tiktoken: tiktoken.Encoding | None = None
        self._python: PythonEncoder | None = None
        self._init_bytes(special_tokens)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def from_ranks(
        cls,
        ranks: Mapping[bytes, int],
        *,
        pattern: str,
        special_tokens: Mapping[str, int] | None = None,
        name: str | None = None,
        engine: Engine = "tiktoken",
    ) -> RegexBPETokenizer:
        """Build a tokenizer from tiktoken-style ranks.

        Args:
            ranks: Token bytes to ids ``0 .. n-1``, all 256 single bytes included.
            pattern: A pattern name or regex.
            special_tokens: Special-token strings to ids (not colliding with ranks).
            name: The encoding's name.
            engine: ``"tiktoken"`` or ``"python"``.

        Returns:
            The tokenizer.

        Raises:
            ConfigError: On invalid ranks, pattern or special tokens.
        """
        checked = validate_ranks(ranks)
        tokenizer = cls(pattern, engine=engine, name=name)
        specials = validate_special_tokens(special_tokens, n_ordinary=len(checked))
        tokenizer._set_vocab(checked, merges=None, specials=specials)
        return tokenizer

    @classmethod
    def from_tiktoken(
        cls,
        name_or_path: str | os.PathLike[str],
        *,
        pattern: str | None = None,
        special_tokens: Mapping[str, int] | None = None,
        engine: Engine = "tiktoken",
    ) -> RegexBPETokenizer:
        """Load a tiktoken encoding by name (``"cl100k_base"``) or a ``.tiktoken`` file.

        Args:
            name_or_path: An encoding name known to tiktoken, or a ``.tiktoken`` file.
            pattern: The split pattern; required for a bare file (it stores none), else it
                overrides the encoding's.
            special_tokens: Special tokens; override the encoding's (a bare file has none).
            engine: ``"tiktoken"`` or ``"python"``.

        Returns:
            The tokenizer.

        Raises:
            ConfigError: On an unknown name, or a file without ``pattern=``.
            FormatError: On a malformed file.
        """
        from lego.tokenize.interop.tiktoken_files import (
            get_encoding,
            is_tiktoken_path,
            read_tiktoken_file,
        )

        if isinstance(name_or_path, str) and not is_tiktoken_path(name_or_path):
            return cls.from_encoding(
                get_encoding(name_or_path),
                pattern=pattern,
                special_tokens=special_tokens,
                engine=engine,
            )
        ranks = read_tiktoken_file(name_or_path)
        if pattern is None:
            raise ConfigError(
                "a .tiktoken file stores no split pattern",
                path=os.fspath(name_or_path),
                key="pattern",
                hint='pass pattern=, e.g. pattern="gpt4" for cl100k_base, "o200k" for '
                'o200k_base, "gpt2" for r50k_base/p50k_base',
            )
        label = os.path.basename(os.fspath(name_or_path))
        return cls.from_ranks(
            ranks, pattern=pattern, special_tokens=special_tokens, name=label, engine=engine
        )

    @classmethod
    def from_encoding(
        cls,
        encoding: tiktoken.Encoding,
        *,
        pattern: str | None = None,
        special_tokens: Mapping[str, int] | None = None,
        engine: Engine = "tiktoken",
    ) -> RegexBPETokenizer:
        """Wrap a ``tiktoken.Encoding``: the same ranks, split pattern and special tokens.

        Without overrides the encoding itself becomes the tokenizer's engine (nothing is
        rebuilt), so ``encode_ordinary`` is that encoding's.

        Args:
            encoding: The encoding (e.g. ``tiktoken.get_encoding("gpt2")``).
            pattern: A split pattern that replaces the encoding's.
            special_tokens: Special tokens that replace the encoding's.
            engine: ``"tiktoken"`` or ``"python"``.

        Returns:
            The tokenizer, named like the encoding.

        Raises:
            ConfigError: On invalid overrides.
        """
        from lego.tokenize.interop.tiktoken_files import encoding_parts

        ranks, found_pattern, found_specials = encoding_parts(encoding)
        tokenizer = cls.from_ranks(
            ranks,
            pattern=pattern if pattern is not None else found_pattern,
            special_tokens=special_tokens if special_tokens is not None else found_specials,
            name=encoding.name,
            engine=engine,
        )
        if pattern is None and special_tokens is None:
            tokenizer._tiktoken = encoding
        return tokenizer

    @classmethod
    def from_gpt2_files(
        cls,
        encoder_json: str | os.PathLike[str],
        vocab_bpe: str | os.PathLike[str],
        *,
        engine: Engine = "tiktoken",
    ) -> RegexBPETokenizer:
        """Load GPT-2's original ``encoder.json`` + ``vocab.bpe`` (pattern ``"gpt2"``).

        Args:
            encoder_json: The byte-level token strings to ids.
            vocab_bpe: The ordered merges.
            engine: ``"tiktoken"`` or ``"python"``.

        Returns:
            The tokenizer, with ``<|endoftext|>`` = 50256.

        Raises:
            FormatError: On malformed or inconsistent files.
        """
        from lego.tokenize.interop.gpt2 import read_gpt2_files

        ranks, specials = read_gpt2_files(encoder_json, vocab_bpe)
        return cls.from_ranks(
            ranks, pattern="gpt2", special_tokens=specials, name="gpt2", engine=engine
        )

    @classmethod
    def from_hf(
        cls, path: str | os.PathLike[str], *, engine: Engine = "tiktoken"
    ) -> RegexBPETokenizer:
        """Load a HuggingFace byte-level BPE ``tokenizer.json``.

        Args:
            path: The ``tokenizer.json`` file.
            engine: ``"tiktoken"`` or ``"python"``.

        Returns:
            The tokenizer.

        Raises:
            FormatError: On a malformed file.
            CompatibilityError: When the file is not a byte-level BPE.
        """
        from lego.tokenize.interop.hf import read_hf_tokenizer_json

        ranks, pattern, specials = read_hf_tokenizer_json(path)
        return cls.from_ranks(ranks, pattern=pattern, special_tokens=specials, engine=engine)

    def save_hf(self, path: str | os.PathLike[str]) -> None:
        """Write a HuggingFace ``tokenizer.json`` that ``tokenizers`` loads to the same ids.

        Args:
            path: The file to write.

        Raises:
            FormatError: When the file cannot be written.
            CompatibilityError: When the vocabulary cannot be expressed as HF merges.
        """
        from lego.tokenize.interop.hf import write_hf_tokenizer_json

        write_hf_tokenizer_json(
            path, ranks=self._ranks, pattern=self._pattern, special_tokens=dict(self._specials)
        )

    # -- properties --------------------------------------------------------------------------

    @property
    def pattern(self) -> str:
        """The split regex."""
        return self._pattern

    @property
    def pattern_name(self) -> str | None:
        """The built-in name of the split pattern, or None for a custom regex."""
        return pattern_name(self._pattern)

    @property
    def engine(self) -> Engine:
        """The encoder in use: ``"tiktoken"`` or ``"python"``."""
        return self._engine

    @engine.setter
    def engine(self, engine: Engine) -> None:
        self._engine = _check_engine(engine)

    @property
    def name(self) -> str:
        """The encoding's name."""
        if self._name is not None:
            return self._name
        return f"lego-{self.pattern_name or 'custom'}-{self.vocab_size}"

    def _vocab_changed(self) -> None:
        self._tiktoken = None
        self._python = None

    def to_tiktoken(self) -> tiktoken.Encoding:
        """Return a ``tiktoken.Encoding`` with these ranks, pattern and special tokens.

        Built once and cached until the vocabulary changes (``train``).

        Returns:
            The encoding; its ids equal this tokenizer's.
        """
        if self._tiktoken is None:
            import tiktoken

            self._tiktoken = tiktoken.Encoding(
                self.name,
                pat_str=self._pattern,
                mergeable_ranks=self._ranks,
                special_tokens=dict(self._specials),
            )
        return self._tiktoken

    def _python_encoder(self) -> PythonEncoder:
        if self._python is None:
            self._python = PythonEncoder(ranks=self._ranks, pattern=self._pattern)
        return self._python

    # -- encoding ----------------------------------------------------------------------------

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode text, treating special tokens' strings as ordinary text.

        Args:
            text: Any Unicode string (unpaired surrogates become U+FFFD, as in tiktoken).

        Returns:
            The ids.
        """
        if self._engine == "tiktoken":
            encoding = self._tiktoken if self._tiktoken is not None else self.to_tiktoken()
            return encoding.encode_ordinary(text)
        return self._python_encoder().encode_ordinary(text)

    def _encode_resolved(
        self, text: str, allowed: frozenset[str], disallowed: frozenset[str]
    ) -> list[int]:
        if self._engine != "tiktoken":
            return super()._encode_resolved(text, allowed, disallowed)
        encoding = self._tiktoken if self._tiktoken is not None else self.to_tiktoken()
        try:
            return encoding.encode(text, allowed_special=allowed, disallowed_special=disallowed)
        except ValueError:
            check_disallowed(text, disallowed)  # raises our error, with the position
            raise

    def encode_batch(
        self,
        texts: Sequence[str],
        *,
        num_threads: int = 8,
        allowed_special: AllowedSpecial = frozenset(),
        disallowed_special: DisallowedSpecial = "all",
    ) -> list[list[int]]:
        """Encode many texts in parallel threads (tiktoken's engine releases the GIL).

        Args:
            texts: The texts.
            num_threads: Threads to use.
            allowed_special: As in [`encode`][lego.tokenize.RegexBPETokenizer.encode].
            disallowed_special: As in [`encode`][lego.tokenize.RegexBPETokenizer.encode].

        Returns:
            One id list per text, in order.

        Raises:
            DisallowedSpecialError: When a text holds a disallowed special's string.
        """
        check_int("num_threads", num_threads, minimum=1, owner="encode_batch")
        if self._engine == "tiktoken":
            allowed, disallowed = resolve_special_sets(
                self._specials, allowed_special, disallowed_special
            )
            try:
                return self.to_tiktoken().encode_batch(
                    list(texts),
                    num_threads=num_threads,
                    allowed_special=allowed,
                    disallowed_special=disallowed,
                )
            except ValueError:
                for text in texts:
                    check_disallowed(text, disallowed)
                raise

        def one(text: str) -> list[int]:
            return self.encode(
                text, allowed_special=allowed_special, disallowed_special=disallowed_special
            )

        with ThreadPoolExecutor(num_threads) as pool:
            return list(pool.map(one, texts))

    def encode_ordinary_batch(
        self, texts: Sequence[str], *, num_threads: int = 8
    ) -> list[list[int]]:
        """Encode many texts in parallel threads, ignoring special tokens.

        Args:
            texts: The texts.
            num_threads: Threads to use.

        Returns:
            One id list per text, in order.
        """
        return self.encode_batch(texts, num_threads=num_threads, disallowed_special=())

    # -- training ----------------------------------------------------------------------------

    def _pretoken_pattern(self) -> str:
        return self._pattern

    def _training_description(self) -> str:
        return f"regex BPE ({self.pattern_name or 'custom pattern'})"

    # -- files -------------------------------------------------------------------------------

    def _fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"pattern": self.pattern_name or self._pattern}
        if self._name is not None:
            fields["name"] = self._name
        fields.update(self._bpe_fields())
        return fields

    @classmethod
    def _from_fields(cls, reader: FieldReader) -> RegexBPETokenizer:
        reader.check_keys({"pattern", "merges", "special_tokens"}, {"byte_order", "name"})
        pattern = reader.get("pattern", str)
        try:
            resolved = resolve_pattern(pattern)
        except ConfigError as exc:
            raise reader.error(exc.message, key="pattern", hint=exc.hint) from None
        name = reader.fields.get("name")
        if name is not None and not isinstance(name, str):
            raise reader.error("field 'name' must be a string", key="name")
        ranks, merges, specials = cls._read_bpe_fields(reader)
        tokenizer = cls(resolved, name=name)
        tokenizer._set_vocab(ranks, merges=merges, specials=specials)
        return tokenizer
