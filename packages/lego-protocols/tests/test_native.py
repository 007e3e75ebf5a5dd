"""Native kernels: the verified cache, and load_native's checks, build, messages and loading.

The cache tests use a fake build (bytes written by Python), so they run anywhere. The
load_native tests compile a tiny C source with the machine's compiler and need no CPU
feature (``cpu_flags=()``); they skip where there is no C compiler or no x86-64 Linux.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lego.protocols import (
    ConfigError,
    NativeLibrary,
    NativeSpec,
    cpu_flags,
    kernel_cache_dir,
    load_native,
    native,
    native_cache,
)

# -- the cache: verified before loading, bad entries rebuilt, unsafe folders refused ----------

LIBRARY = b"\x7fELF a pretend shared library " * 64


class Builds:
    """A build callback that counts its calls, and an announce callback that keeps its words."""

    def __init__(self, data: bytes = LIBRARY, delay: float = 0.0) -> None:
        self.data = data
        self.delay = delay
        self.calls = 0
        self.said: list[str] = []
        self._lock = threading.Lock()

    def build(self, output: Path) -> None:
        with self._lock:
            self.calls += 1
        time.sleep(self.delay)
        output.write_bytes(self.data)

    def announce(self, problem: str) -> None:
        self.said.append(problem)

    def get(self, library: Path) -> Path:
        return native_cache.verified_library(library, build=self.build, announce=self.announce)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tmp_path / "kernels"


@pytest.fixture
def library(folder: Path) -> Path:
    return folder / "demo-0123456789abcdef.so"


@pytest.fixture
def built(library: Path) -> Path:
    """A library built once into the cache."""
    Builds().get(library)
    return library


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _record(library: Path) -> Path:
    return library.with_name(library.name + native_cache.RECORD_SUFFIX)


@pytest.fixture
def umask() -> Iterator[int]:
    old = os.umask(0o027)
    yield 0o027
    os.umask(old)


def test_a_build_writes_the_library_and_its_record_with_the_umask(
    library: Path, umask: int
) -> None:
    builds = Builds()
    assert builds.get(library) == library
    assert builds.said == [native_cache.MISSING]
    assert library.read_bytes() == LIBRARY
    digest = hashlib.sha256(LIBRARY).hexdigest()
    assert _record(library).read_text() == f"{digest}  {library.name}\n"  # sha256sum -c reads it
    assert stat.S_IMODE(library.stat().st_mode) == 0o755 & ~umask
    assert stat.S_IMODE(_record(library).stat().st_mode) == 0o644 & ~umask
    assert _listing(library.parent) == [library.name, _record(library).name]  # no temporaries


def test_a_verified_library_is_used_as_it_is(built: Path) -> None:
    before = built.stat().st_mtime_ns
    builds = Builds()
    assert builds.get(built) == built
    assert builds.calls == 0
    assert builds.said == []
    assert built.stat().st_mtime_ns == before


def _truncate(library: Path) -> None:
    library.write_bytes(LIBRARY[:100])


def _empty(library: Path) -> None:
    library.write_bytes(b"")


def _plant(library: Path) -> None:
    library.write_bytes(b"\x7fELF someone else's code " * 64)


def _no_record(library: Path) -> None:
    _record(library).unlink()


def _damaged_record(library: Path) -> None:
    _record(library).write_bytes(b"\xff\xfe not a record\n")


def _record_of_another_file(library: Path) -> None:
    digest = hashlib.sha256(LIBRARY).hexdigest()
    _record(library).write_text(f"{digest}  demo-ffffffffffffffff.so\n")


def _group_writable(library: Path) -> None:
    library.chmod(0o775)


def _world_writable_record(library: Path) -> None:
    _record(library).chmod(0o666)


def _a_link(library: Path) -> None:
    target = library.with_name("elsewhere.so")
    target.write_bytes(LIBRARY)
    library.unlink()
    library.symlink_to(target)


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (_truncate, "does not match its recorded SHA-256"),
        (_empty, "is empty"),
        (_plant, "does not match its recorded SHA-256"),
        (_no_record, "has no SHA-256 record"),
        (_damaged_record, "has a damaged record"),
        (_record_of_another_file, "has a damaged record"),
        (_group_writable, "is writable by group or others (mode 0o775)"),
        (_world_writable_record, "has a record that is writable by group or others"),
        (_a_link, "is not a regular file"),
    ],
)
def test_a_bad_library_is_never_returned_but_rebuilt(
    built: Path, damage: object, said: str
) -> None:
    assert callable(damage)
    damage(built)
    builds = Builds()
    assert builds.get(built) == built
    assert builds.calls == 1
    assert len(builds.said) == 1
    assert said in builds.said[0]
    assert not built.is_symlink()
    assert built.read_bytes() == LIBRARY
    assert native_cache.library_problem(built) is None


def test_a_folder_others_can_write_is_refused_and_left_alone(built: Path) -> None:
    folder = built.parent
    folder.chmod(0o777)
    _plant(built)
    before = {name: (folder / name).read_bytes() for name in _listing(folder)}
    builds = Builds()
    with pytest.raises(ConfigError, match=r"writable by group or others \(mode 0o777\)") as info:
        builds.get(built)
    assert "chmod go-w" in str(info.value)
    assert builds.calls == 0
    assert {name: (folder / name).read_bytes() for name in _listing(folder)} == before


def test_a_cache_that_is_a_file_is_refused(folder: Path, library: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.write_text("not a folder")
    with pytest.raises(ConfigError, match="not a folder"):
        Builds().get(library)


needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0,
    reason="giving a file to another user needs root (chown)",
)


@needs_root
def test_a_folder_of_another_user_is_refused(built: Path) -> None:
    os.chown(built.parent, 65534, 65534)
    with pytest.raises(ConfigError, match="belongs to another user"):
        Builds().get(built)


@needs_root
def test_a_library_of_another_user_is_rebuilt(built: Path) -> None:
    os.chown(built, 65534, 65534)
    builds = Builds()
    builds.get(built)
    assert "belongs to another user" in builds.said[0]
    assert built.stat().st_uid == os.geteuid()


def _dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def _host() -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in socket.gethostname())


def test_temporaries_of_dead_builders_are_removed_before_a_build(library: Path) -> None:
    folder = library.parent
    folder.mkdir(parents=True)
    dead = folder / f".{library.name}.tmp-{_host()}-{_dead_pid()}-0badc0de"
    alive = folder / f".{library.name}.tmp-{_host()}-{os.getpid()}-0badc0de"
    legacy_old = folder / ".demo-abcd1234.so"  # earlier lego-generate: '.skinny-' + 8 + '.so'
    legacy_new = folder / ".demo-efgh5678.so"
    legacy_other = folder / ".other-abcd1234.so"  # another kernel's name: not ours to judge
    for leftover in (dead, alive, legacy_old, legacy_new, legacy_other):
        leftover.write_bytes(b"half a library")
    an_hour_ago = time.time() - 7200
    os.utime(legacy_old, (an_hour_ago, an_hour_ago))
    os.utime(legacy_other, (an_hour_ago, an_hour_ago))
    Builds().get(library)
    assert not dead.exists()
    assert not legacy_old.exists()
    assert alive.exists()  # a live builder's work is left alone
    assert legacy_new.exists()  # could still be an older version's build in progress
    assert legacy_other.exists()


def test_temporaries_of_dead_builders_are_removed_from_a_verified_cache(built: Path) -> None:
    dead = built.parent / f".{built.name}.tmp-{_host()}-{_dead_pid()}-0badc0de"
    dead.write_bytes(b"half a library")
    builds = Builds()
    assert builds.get(built) == built
    assert builds.calls == 0  # nothing rebuilt
    assert not dead.exists()


def test_a_failed_build_leaves_nothing_behind(library: Path) -> None:
    def failing(output: Path) -> None:
        output.write_bytes(b"half")
        raise OSError("cc failed: no such luck")

    with pytest.raises(OSError, match="no such luck"):
        native_cache.verified_library(library, build=failing, announce=lambda problem: None)
    assert _listing(library.parent) == []


def test_an_empty_build_is_an_error(library: Path) -> None:
    with pytest.raises(OSError, match="empty library"):
        Builds(data=b"").get(library)
    assert _listing(library.parent) == []


def test_concurrent_builders_build_once(library: Path) -> None:
    builds = Builds(delay=0.3)
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(builds.get(library))) for _ in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [library, library]
    assert builds.calls == 1  # the second waited for the first, then used its build
    assert _listing(library.parent) == [library.name, _record(library).name]  # lock released


# -- the spec ---------------------------------------------------------------------------------

ADD_C = "int add(long a, long b, long *out) { *out = a + b; return 0; }\n"
ADD_ARGS = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p]
FLAGS = ("-O2", "-std=gnu11", "-fPIC", "-shared")  # no OpenMP: any C compiler builds it


def _spec(source: Path, **changes: object) -> NativeSpec:
    fields: dict[str, object] = {
        "name": "add",
        "source": source,
        "owner": "lego-test",
        "what": "the native add kernel",
        "fallback": "Python adds instead",
        "skip_hint": "ADD_NATIVE=0 skips it",
        "functions": {"add": ADD_ARGS},
        "cpu_flags": (),
        "compile_flags": FLAGS,
    }
    fields.update(changes)
    return NativeSpec(**fields)  # type: ignore[arg-type]


def test_a_spec_is_hashable_and_read_only(tmp_path: Path) -> None:
    spec = _spec(str(tmp_path / "add.c"), cpu_flags=["sse2"], compile_flags=["-O1"])
    assert spec.source == tmp_path / "add.c"
    assert spec.cpu_flags == ("sse2",)
    assert spec.compile_flags == ("-O1",)
    assert spec.functions["add"] == tuple(ADD_ARGS)
    twin = _spec(tmp_path / "add.c", cpu_flags=("sse2",), compile_flags=("-O1",))
    assert twin == spec
    assert hash(twin) == hash(spec)
    assert spec != _spec(tmp_path / "add.c", functions={"add": ADD_ARGS[:2]})
    with pytest.raises(TypeError):
        spec.functions["sub"] = ()  # type: ignore[index]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "../add"}, "letters, digits and underscores"),
        ({"name": ""}, "letters, digits and underscores"),
        ({"functions": {}}, "lists no functions"),
        ({"functions": {"add(": ADD_ARGS}}, "not a C function name"),
        ({"functions": {"add": "c_long"}}, "needs a list of ctypes argument types"),
    ],
)
def test_a_spec_that_cannot_work_is_refused(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _spec(tmp_path / "add.c", **changes)


def test_the_cache_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LEGO_KERNELS_HOME", str(tmp_path / "here"))
    assert kernel_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("LEGO_KERNELS_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert kernel_cache_dir() == tmp_path / "xdg" / "lego" / "kernels"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert kernel_cache_dir() == Path.home() / ".cache" / "lego" / "kernels"


def test_cpu_flags_are_this_cpus() -> None:
    flags = cpu_flags()
    assert isinstance(flags, frozenset)
    if sys.platform == "linux" and platform.machine() == "x86_64":
        assert "sse2" in flags  # every x86-64 CPU has it


# -- load_native: checks, build, messages, loading --------------------------------------------


def _c_compiler_here() -> str:
    """Why load_native cannot build here, or "" when it can."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return "load_native builds only on x86-64 Linux"
    if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler here"
    return ""


needs_cc = pytest.mark.skipif(bool(_c_compiler_here()), reason=_c_compiler_here() or "-")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty kernel cache and no memory of earlier loads (both restored after the test)."""
    folder = tmp_path / "kernels"
    monkeypatch.setenv("LEGO_KERNELS_HOME", str(folder))
    monkeypatch.setattr(native, "_loaded", {})
    return folder


@pytest.fixture
def add_c(tmp_path: Path) -> Path:
    source = tmp_path / "src" / "add.c"
    source.parent.mkdir()
    source.write_text(ADD_C)
    return source


def _add(loaded: NativeLibrary, a: int, b: int) -> int:
    out = ctypes.c_long(0)
    assert loaded.functions["add"](a, b, ctypes.byref(out)) == 0
    return out.value


def _forget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A new process, as far as load_native knows."""
    monkeypatch.setattr(native, "_loaded", {})


@needs_cc
def test_a_kernel_is_built_once_into_the_cache_and_announced(
    cache: Path, add_c: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = _spec(add_c)
    loaded = load_native(spec)
    assert loaded.available, loaded.reason
    assert loaded.reason == ""
    assert _add(loaded, 2, 40) == 42
    assert loaded.cpu_flags == cpu_flags()
    assert loaded.library is not None
    assert loaded.library.parent == cache
    assert loaded.library.name.startswith("add-")
    said = capfd.readouterr().err.splitlines()
    assert len(said) == 1, said
    assert said[0].startswith("lego-test: compiling the native add kernel with ")
    assert f"into {cache} (once per machine and compiler" in said[0]
    assert said[0].endswith("; ADD_NATIVE=0 skips it)")
    assert _listing(cache) == [loaded.library.name, loaded.library.name + ".sha256"]
    assert load_native(spec) is loaded  # once per process
    assert load_native(_spec(add_c)) is loaded  # an equal spec is the same load
    built = loaded.library.stat().st_mtime_ns
    _forget(monkeypatch)
    again = load_native(spec)
    assert again is not loaded
    assert again.library == loaded.library
    assert again.library.stat().st_mtime_ns == built  # reused, not rebuilt
    assert _add(again, -1, 1) == 0
    assert capfd.readouterr().err == ""  # nothing to say when nothing is built


@needs_cc
def test_the_hash_covers_the_source_and_the_flags(
    cache: Path, add_c: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_native(_spec(add_c)).library
    add_c.write_text(ADD_C + "/* changed */\n")
    _forget(monkeypatch)
    second = load_native(_spec(add_c)).library
    other_flags = load_native(_spec(add_c, compile_flags=("-O1", *FLAGS[1:]))).library
    assert first is not None
    assert second is not None
    assert other_flags is not None
    assert len({first, second, other_flags}) == 3
    assert {p.name for p in cache.glob("add-*.so")} == {first.name, second.name, other_flags.name}
    assert capfd.readouterr().err.count("lego-test: compiling") == 3


@needs_cc
def test_a_damaged_cached_library_is_rebuilt_not_loaded(
    cache: Path, add_c: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    first = _builder(add_c, cache)  # another process: this one never maps the damaged file
    assert first.communicate(timeout=300)[0] == "0 42\n"
    (library,) = cache.glob("add-*.so")
    library.write_bytes(library.read_bytes()[:64])  # truncated in place: loading it would crash
    loaded = load_native(_spec(add_c))
    assert loaded.available, loaded.reason
    assert loaded.library == library
    assert _add(loaded, 3, 4) == 7
    said = capfd.readouterr().err.splitlines()
    assert said == [
        f"lego-test: rebuilding the native add kernel: the cached {library} does not match its "
        "recorded SHA-256 (64 bytes; truncated, damaged or replaced); it is not loaded"
    ]


@needs_cc
def test_a_cache_folder_others_can_write_is_never_loaded_from(
    cache: Path, add_c: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    cache.mkdir()
    cache.chmod(0o777)
    loaded = load_native(_spec(add_c))
    assert not loaded.available
    assert "writable by group or others (mode 0o777)" in loaded.reason
    assert "chmod go-w" in loaded.reason
    assert loaded.functions == {}
    said = capfd.readouterr().err.splitlines()
    assert len(said) == 1, said
    assert said[0].startswith("lego-test: not loading the native add kernel: the native kernel ")
    assert "; Python adds instead; to fix this: make it yours and private (chmod go-w" in said[0]
    assert _listing(cache) == []  # nothing built into it


@needs_cc
def test_a_failing_compiler_means_unavailable_with_its_message(
    cache: Path,
    add_c: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'no such luck' >&2\necho 'second line' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    spec = _spec(add_c)
    loaded = load_native(spec)
    assert not loaded.available
    assert loaded.reason.startswith("could not build the kernels: ")
    assert "no such luck\nsecond line" in loaded.reason  # the whole message
    assert [p for p in cache.iterdir() if p.suffix == ".so"] == []  # nothing half-written
    said = capfd.readouterr().err.splitlines()
    assert len(said) == 2, said  # the build announced, then its failure: once per process
    assert said[0].startswith(f"lego-test: compiling the native add kernel with {broken} into ")
    assert said[1].startswith(
        f"lego-test: could not build the native add kernel ({broken} failed: no such luck); "
        "Python adds instead"
    )
    assert "second line" not in said[1]
    assert load_native(spec) is loaded
    assert capfd.readouterr().err == ""


@needs_cc
def test_a_source_that_does_not_compile_says_the_compilers_words(
    cache: Path, add_c: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    add_c.write_text("int add(long a, long b, long *out) { return oops; }\n")
    loaded = load_native(_spec(add_c))
    assert not loaded.available
    assert "oops" in loaded.reason
    assert "could not build the native add kernel" in capfd.readouterr().err
    assert [p for p in cache.iterdir() if p.suffix == ".so"] == []


@needs_cc
def test_a_function_the_library_lacks_means_it_cannot_load(
    cache: Path, add_c: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    loaded = load_native(_spec(add_c, functions={"add": ADD_ARGS, "sub": ADD_ARGS}))
    assert not loaded.available
    assert loaded.reason.startswith("could not load the kernels: ")
    assert "sub" in loaded.reason
    said = capfd.readouterr().err.splitlines()
    assert said[-1].startswith("lego-test: could not load the native add kernel (")


def test_no_compiler_means_unavailable_and_nothing_said(
    cache: Path,
    add_c: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(native.platform, "system", lambda: "Linux")
    monkeypatch.setattr(native.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv("CC", raising=False)
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    loaded = load_native(_spec(add_c))
    assert loaded == NativeLibrary(
        False, "no C compiler found (set $CC or install gcc)", cpu_flags=cpu_flags()
    )
    assert capfd.readouterr().err == ""
    assert not cache.exists()


def test_a_cpu_without_the_flags_means_unavailable_and_nothing_said(
    cache: Path, add_c: Path, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native.platform, "system", lambda: "Linux")
    monkeypatch.setattr(native.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(native, "cpu_flags", lambda: frozenset({"sse2", "avx2"}))
    loaded = load_native(_spec(add_c, cpu_flags=("avx2", "avx512f", "fma")))
    assert not loaded.available
    assert loaded.reason == "this CPU lacks avx512f, fma"
    assert loaded.cpu_flags == {"sse2", "avx2"}
    assert capfd.readouterr().err == ""
    assert not cache.exists()


def test_another_system_means_unavailable(
    cache: Path, add_c: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native.platform, "system", lambda: "Darwin")
    loaded = load_native(_spec(add_c))
    assert not loaded.available
    assert loaded.reason == "the kernels need an x86-64 CPU under Linux"


_BUILDER = """
import ctypes, sys
from pathlib import Path
from lego.protocols import NativeSpec, load_native
spec = NativeSpec(
    name="add", source=Path(sys.argv[1]), owner="lego-test", what="the native add kernel",
    fallback="Python adds instead", skip_hint="ADD_NATIVE=0 skips it",
    functions={"add": [ctypes.c_long, ctypes.c_long, ctypes.c_void_p]}, cpu_flags=(),
    compile_flags=("-O2", "-std=gnu11", "-fPIC", "-shared"),
)
loaded = load_native(spec)
out = ctypes.c_long(0)
print(loaded.reason or loaded.functions["add"](20, 22, ctypes.byref(out)), out.value)
"""


def _builder(add_c: Path, cache: Path, compiler: Path | None = None) -> subprocess.Popen[str]:
    """A process that loads the add kernel from ``cache`` and prints ``add(20, 22)``."""
    env = {**os.environ, "LEGO_KERNELS_HOME": str(cache)}
    if compiler is not None:
        env["CC"] = str(compiler)
    return subprocess.Popen(
        [sys.executable, "-c", _BUILDER, str(add_c)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@needs_cc
def test_concurrent_processes_build_once(cache: Path, add_c: Path, tmp_path: Path) -> None:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    slow = tmp_path / "slow-cc"  # a compiler slow enough for the two builders to meet
    slow.write_text(f'#!/bin/sh\nsleep 1\nexec "{compiler}" "$@"\n')
    slow.chmod(0o755)
    builders = [_builder(add_c, cache, slow) for _ in "ab"]
    results = [builder.communicate(timeout=300) for builder in builders]
    assert [builder.returncode for builder in builders] == [0, 0], results
    assert [out for out, _ in results] == ["0 42\n", "0 42\n"]
    said = "".join(err for _, err in results)
    assert said.count("lego-test: compiling the native add kernel") == 1, said
    (library,) = cache.glob("add-*.so")
    assert _listing(cache) == [library.name, library.name + ".sha256"]  # lock released
