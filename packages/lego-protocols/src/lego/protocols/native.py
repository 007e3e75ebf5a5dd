"""Native kernels in C: compiled once per machine into a verified cache, loaded with ``ctypes``.

A brick that ships a C kernel (lego-generate's CPU decode kernels, lego-peft's NF4
dequantization) describes it with a [`NativeSpec`][lego.protocols.NativeSpec] and calls
[`load_native()`][lego.protocols.load_native]. The first call in a process runs these steps
and stops at the first that fails:

1. the CPU: x86-64 under Linux with every flag of ``spec.cpu_flags`` (read from
   ``/proc/cpuinfo`` by [`cpu_flags()`][lego.protocols.cpu_flags]);
2. a C compiler: ``$CC``, else the first of ``cc``, ``gcc``, ``clang`` on the ``PATH``;
3. the cache: the source compiled with ``spec.compile_flags`` into
   [`kernel_cache_dir()`][lego.protocols.kernel_cache_dir] as ``<name>-<hash>.so``, the hash
   taken over the source, the compiler's ``--version`` and the flags, so a changed source or
   compiler builds anew and an unchanged one never rebuilds. The library is loaded only
   after [`lego.protocols.native_cache`][lego.protocols.native_cache] verified it (the folder
   and file are this user's and writable by nobody else, the SHA-256 recorded beside it
   matches); a missing or bad one is built first;
4. loading: ``ctypes.CDLL`` on the verified file, then each function of ``spec.functions``
   with its argument types (every kernel returns a C ``int``).

Nothing here raises: a step that fails gives a
[`NativeLibrary`][lego.protocols.NativeLibrary] whose ``reason`` says why, and the brick
uses its PyTorch path. One line on stderr, starting with ``spec.owner``, says when the
library is compiled, rebuilt (and why), refused (a cache folder others can write) or fails
to build or load; nothing is said when a CPU or compiler is missing, or when the cache
holds a verified build.

Example:
    >>> import ctypes
    >>> from pathlib import Path
    >>> spec = NativeSpec(
    ...     name="add",
    ...     source=Path("add.c"),  # int add(long a, long b, long *out)
    ...     owner="my-brick",
    ...     what="the native add kernel",
    ...     fallback="Python adds",
    ...     skip_hint="MY_BRICK_NATIVE=0 skips it",
    ...     functions={"add": [ctypes.c_long, ctypes.c_long, ctypes.c_void_p]},
    ...     cpu_flags=(),
    ... )
    >>> spec.functions["add"] == (ctypes.c_long, ctypes.c_long, ctypes.c_void_p)
    True
    >>> try:
    ...     NativeSpec(**{**spec.__dict__, "name": "../add"})
    ... except ConfigError as error:
    ...     print(error.message)
    a native kernel's name must be letters, digits and underscores, got '../add'
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lego.protocols.errors import ConfigError, LegoError
from lego.protocols.native_cache import MISSING, verified_library

__all__ = ["NativeLibrary", "NativeSpec", "cpu_flags", "kernel_cache_dir", "load_native"]

_NAME = re.compile(r"[A-Za-z0-9_]+")
_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class NativeSpec:
    """What a brick's C kernel is, where it runs and how its messages read.

    Equal specs share one load per process (specs are hashable; ``functions`` takes no part
    in the hash). ``functions`` is stored read-only, each argument list as a tuple.

    Attributes:
        name: The file stem of the library: ``"skinny"`` is cached as
            ``<cache>/skinny-<hash16>.so``. Letters, digits and underscores.
        source: The ``.c`` file.
        owner: Who speaks on stderr: ``"lego-generate"`` starts its lines with
            ``"lego-generate: "``.
        what: The kernels in words, e.g. ``"the native CPU decode kernels"``.
        fallback: What happens without them, e.g. ``"decoding uses PyTorch's kernels"``.
        skip_hint: How to turn them off, e.g. ``"native_kernels=False skips them"``.
        functions: Kernel name -> its ``ctypes`` argument types; each returns a C ``int``.
        cpu_flags: The ``/proc/cpuinfo`` flags the kernels need.
        compile_flags: The compiler's flags (the source and ``-o <library>`` follow them).
    """

    name: str
    source: Path
    owner: str
    what: str
    fallback: str
    skip_hint: str
    functions: Mapping[str, Sequence[Any]] = field(hash=False)
    cpu_flags: tuple[str, ...] = ("avx512f", "avx512bw", "avx512vl", "fma")
    compile_flags: tuple[str, ...] = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-fopenmp")

    def __post_init__(self) -> None:
        """Check the name and the functions; store read-only, hashable copies.

        Raises:
            ConfigError: The name is not a file stem, or ``functions`` is empty, names
                something that is not a C identifier or gives no argument list.
        """
        name: object = self.name  # checked at run time: callers may not be type-checked
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ConfigError(
                f"a native kernel's name must be letters, digits and underscores, "
                f"got {self.name!r}",
                hint="name it like a C file stem, e.g. 'skinny'",
            )
        given: object = self.functions
        if not isinstance(given, Mapping) or not given:
            raise ConfigError(
                f"the native kernel {self.name!r} lists no functions",
                path=self.source,
                hint="give functions={'c_name': [ctypes argument types]}",
            )
        functions: dict[str, tuple[Any, ...]] = {}
        for symbol, argtypes in given.items():
            if not isinstance(symbol, str) or not _SYMBOL.fullmatch(symbol):
                raise ConfigError(
                    f"the native kernel {self.name!r} lists {symbol!r}, not a C function name",
                    path=self.source,
                    hint="use the name the C source defines",
                )
            if isinstance(argtypes, str) or not isinstance(argtypes, Sequence):
                raise ConfigError(
                    f"the native function {symbol!r} needs a list of ctypes argument types, "
                    f"got {type(argtypes).__name__}",
                    path=self.source,
                    hint="e.g. [ctypes.c_void_p, ctypes.c_int64]",
                )
            functions[symbol] = tuple(argtypes)
        object.__setattr__(self, "source", Path(self.source))
        object.__setattr__(self, "functions", MappingProxyType(functions))
        object.__setattr__(self, "cpu_flags", tuple(self.cpu_flags))
        object.__setattr__(self, "compile_flags", tuple(self.compile_flags))


@dataclass(frozen=True)
class NativeLibrary:
    """A loaded native library, or why there is none.

    Attributes:
        available: The library is compiled and loaded, and this CPU runs it.
        reason: Why it is unavailable (``""`` when available).
        library: The compiled shared library, when available.
        cpu_flags: This CPU's ``/proc/cpuinfo`` flags (empty where they were not read), so
            a caller can pick among its kernels (e.g. by ``"avx512_bf16"``).
        functions: Kernel name -> the loaded C function (empty when unavailable). A call
            takes the spec's argument types and returns the kernel's ``int``.
    """

    available: bool
    reason: str = ""
    library: Path | None = None
    cpu_flags: frozenset[str] = frozenset()
    functions: Mapping[str, Callable[..., int]] = field(default_factory=dict, hash=False)


def kernel_cache_dir() -> Path:
    """Where compiled kernels are kept (one folder for every brick's kernels).

    Returns:
        ``$LEGO_KERNELS_HOME``, else ``$XDG_CACHE_HOME/lego/kernels``, else
        ``~/.cache/lego/kernels``.
    """
    home = os.environ.get("LEGO_KERNELS_HOME")
    if home:
        return Path(home)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lego" / "kernels"


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this CPU.

    Returns:
        The ``flags`` line of Linux's ``/proc/cpuinfo`` (e.g. ``"avx512f"``); empty where
        there is none.
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def _compiler() -> str | None:
    """The C compiler to use: ``$CC`` or the first of cc, gcc, clang on the PATH."""
    explicit = os.environ.get("CC")
    if explicit:
        return shutil.which(explicit) or explicit
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _say(spec: NativeSpec, message: str) -> None:
    """One line on stderr (a build is rare and slow enough to be worth announcing)."""
    print(f"{spec.owner}: {message}", file=sys.stderr, flush=True)


def _library_path(spec: NativeSpec, compiler: str) -> Path:
    """Where the build of this source with this compiler and these flags is cached."""
    source = spec.source.read_bytes()
    version = subprocess.run(
        [compiler, "--version"], capture_output=True, text=True, timeout=60, check=False
    ).stdout
    flags = " ".join(spec.compile_flags)
    key = hashlib.sha256(source + version.encode() + flags.encode()).hexdigest()
    return kernel_cache_dir() / f"{spec.name}-{key[:16]}.so"


def _compile(spec: NativeSpec, compiler: str, output: Path) -> None:
    """Compile the spec's source into ``output``.

    Raises:
        OSError: The compiler failed.
    """
    result = subprocess.run(
        [compiler, *spec.compile_flags, str(spec.source), "-o", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise OSError(f"{compiler} failed: {result.stderr.strip()[-2000:]}")


def _build(spec: NativeSpec, compiler: str) -> Path:
    """The verified library of the cache, compiled (or recompiled) first when need be.

    Raises:
        OSError: The compiler failed.
        ConfigError: The cache folder is not safe to load code from.
    """
    library = _library_path(spec, compiler)

    def announce(problem: str) -> None:
        if problem == MISSING:
            _say(
                spec,
                f"compiling {spec.what} with {compiler} into {library.parent} (once per "
                f"machine and compiler, a few seconds; {spec.skip_hint})",
            )
        else:
            _say(spec, f"rebuilding {spec.what}: the cached {library} {problem}; it is not loaded")

    return verified_library(
        library, build=lambda output: _compile(spec, compiler, output), announce=announce
    )


def _failed(
    spec: NativeSpec, step: str, error: BaseException, flags: frozenset[str]
) -> NativeLibrary:
    """Say that the build or the load failed: the first line on stderr, all in the reason."""
    first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
    _say(
        spec,
        f"could not {step} {spec.what} ({first_line}); {spec.fallback} (the reason that "
        "load_native() gives has the whole message)",
    )
    return NativeLibrary(False, f"could not {step} the kernels: {error}", cpu_flags=flags)


def _load(spec: NativeSpec) -> NativeLibrary:
    """Check the CPU, build and load the library (no memory of earlier loads)."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return NativeLibrary(False, "the kernels need an x86-64 CPU under Linux")
    flags = cpu_flags()
    missing = [flag for flag in spec.cpu_flags if flag not in flags]
    if missing:
        return NativeLibrary(False, f"this CPU lacks {', '.join(missing)}", cpu_flags=flags)
    compiler = _compiler()
    if compiler is None:
        return NativeLibrary(False, "no C compiler found (set $CC or install gcc)", cpu_flags=flags)
    try:
        path = _build(spec, compiler)
    except LegoError as error:  # a cache folder others can write: never load from it
        _say(
            spec,
            f"not loading {spec.what}: {error.message} ({error.path}); {spec.fallback}; "
            f"to fix this: {error.hint}",
        )
        return NativeLibrary(
            False, f"{error.message} ({error.path}); {error.hint}", cpu_flags=flags
        )
    except (OSError, subprocess.SubprocessError) as error:
        return _failed(spec, "build", error, flags)
    try:
        library = ctypes.CDLL(str(path))
        functions: dict[str, Callable[..., int]] = {}
        for name, argtypes in spec.functions.items():
            function = getattr(library, name)  # AttributeError: the source lacks it
            function.argtypes = list(argtypes)
            function.restype = ctypes.c_int
            functions[name] = function
    except (OSError, AttributeError) as error:
        return _failed(spec, "load", error, flags)
    return NativeLibrary(True, library=path, cpu_flags=flags, functions=MappingProxyType(functions))


_loaded: dict[NativeSpec, NativeLibrary] = {}
_loading = threading.Lock()


def load_native(spec: NativeSpec) -> NativeLibrary:
    """The spec's compiled library, loaded (built on the first call of a process, if need be).

    The first call for a spec checks the CPU and the compiler and, when this machine has no
    verified build of the current source yet, compiles it (a line on stderr says so); later
    calls return the same answer at once. Threads that ask together wait for one load.

    Args:
        spec: The kernel's source, functions, CPU needs and wording.

    Returns:
        The loaded library, or ``available=False`` with the ``reason``.
    """
    loaded = _loaded.get(spec)
    if loaded is not None:
        return loaded
    with _loading:
        loaded = _loaded.get(spec)
        if loaded is None:
            loaded = _loaded[spec] = _load(spec)
    return loaded
