from __future__ import annotations

import sysconfig
from pathlib import Path

from lego.data.corpora import PythonStdlibCorpus, stdlib_files


def test_files_follow_the_definition(tmp_path: Path) -> None:
    for rel in [
        "os.py",
        "a/b.py",
        "a/__init__.py",
        "test/test_x.py",
        "a/tests/t.py",
        "idlelib/x.py",
        "turtledemo/y.py",
        "site-packages/pkg/z.py",
        "dist-packages/q.py",
        "a/notes.txt",
        "Z.py",
        "a_b.py",
        "testing.py",
    ]:
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"# {rel}\n")
    found = [p.relative_to(tmp_path).as_posix() for p in stdlib_files(tmp_path)]
    assert found == ["Z.py", "a/__init__.py", "a/b.py", "a_b.py", "os.py", "testing.py"]


def test_undecodable_sources_are_skipped_and_counted(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_bytes(b"# caf\xe9\n")
    corpus = PythonStdlibCorpus(root=tmp_path)
    docs = list(corpus)
    assert docs[-1] == "x = 1\n"
    assert not any(d.startswith("# caf") for d in docs)
    assert len(corpus.skipped) == 1
    assert corpus.skipped[0].path == str(tmp_path / "b.py")
    assert corpus.skipped[0].offset == 5


def test_real_corpus_order_and_size() -> None:
    from pydoc_data.topics import topics

    corpus = PythonStdlibCorpus()
    assert corpus.name == "python-stdlib"
    docs = list(corpus)
    files = stdlib_files()
    assert len(docs) + len(corpus.skipped) == len(topics) + len(files)
    assert docs[: len(topics)] == [topics[k] for k in sorted(topics)]
    root = Path(sysconfig.get_paths()["stdlib"])
    assert docs[len(topics)] == files[0].read_text(encoding="utf-8")
    assert (root / "os.py") in files
    assert not any("site-packages" in p.parts for p in files)
    assert sum(len(d) for d in docs) > 5_000_000  # several MB on every CPython
