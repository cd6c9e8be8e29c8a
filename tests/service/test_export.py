"""``package.export``: each archive format BentoML writes, read back by ``bentoml import``."""

from __future__ import annotations

from pathlib import Path

import pytest

from recstack.serving.package import EXPORT_FORMATS, check_export, export_bento

SERVICE = """
import bentoml


@bentoml.service
class Tiny:
    @bentoml.api
    def ping(self) -> str:
        return "pong"
"""


@pytest.fixture(scope="module")
def tiny_bento(bento_store: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A one-endpoint bento built into the session's store (BentoML's home is per process)."""
    import bentoml

    ctx = tmp_path_factory.mktemp("tiny")
    (ctx / "tiny.py").write_text(SERVICE)
    (ctx / "bentofile.yaml").write_text('service: "tiny:Tiny"\nname: tiny\ninclude: ["tiny.py"]\n')
    bento = bentoml.bentos.build_bentofile(str(ctx / "bentofile.yaml"), build_ctx=str(ctx), version="t1")
    return str(bento.tag)


@pytest.mark.parametrize("fmt", ["gz", "tar", "xz"])
def test_each_format_is_written_under_its_name_and_imports_back(
    tiny_bento: str, tmp_path: Path, fmt: str
) -> None:
    import bentoml

    for name in EXPORT_FORMATS.values():  # an earlier run's archives of every format
        if name is not None:
            (tmp_path / name).write_bytes(b"stale")
    path = export_bento(tiny_bento, tmp_path, fmt)
    assert path == tmp_path / EXPORT_FORMATS[fmt] and path.stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # only this run's archive is left

    bentoml.bentos.delete(tiny_bento)
    try:
        imported = bentoml.bentos.import_bento(str(path))
        assert str(imported.tag) == tiny_bento
        assert (Path(imported.path) / "src" / "tiny.py").read_text() == SERVICE
    finally:
        try:  # the next case's export needs the bento in the store, whatever this one did
            bentoml.bentos.get(tiny_bento)
        except bentoml.exceptions.NotFound:
            bentoml.bentos.import_bento(str(path))


def test_none_writes_no_archive_and_clears_old_ones(tiny_bento: str, tmp_path: Path) -> None:
    (tmp_path / "recstack.bento").write_bytes(b"stale")
    assert export_bento(tiny_bento, tmp_path, "none") is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", [True, "zip", "XZ", None])
def test_an_unknown_format_is_refused_by_name(bad) -> None:
    with pytest.raises(ValueError, match=r"package.export must be one of xz, gz, tar, none; got"):
        check_export(bad)


def test_a_bento_serves_its_own_recstack_sources_before_an_installed_one(tmp_path: Path) -> None:
    """bentos/service.py puts the recstack sources beside it (a built bento's) ahead of the path, so
    serving an older bento in the project's environment, where an editable install of the working tree is
    on the path, runs the code the bento was built with. Checked by running that block of service.py in a
    fresh interpreter, in a folder laid out like a bento's sources."""
    import shutil
    import subprocess
    import sys

    service = (Path(__file__).parents[2] / "bentos" / "service.py").read_text()
    block = service[
        service.index("# --- bento sources first") : service.index("# --- end bento sources first")
    ]
    (tmp_path / "recstack").mkdir()
    (tmp_path / "recstack" / "__init__.py").write_text("BUILT_WITH = 'the bento'\n")
    (tmp_path / "service.py").write_text(
        "import os\nimport sys\nfrom pathlib import Path\n"
        + block
        + "import recstack\nprint(recstack.BUILT_WITH)\n"
    )
    # Imported as a module from elsewhere, as BentoML's worker does: its folder is not on the path by itself.
    load = [sys.executable, "-c", f"import runpy; runpy.run_path({str(tmp_path / 'service.py')!r})"]
    run = subprocess.run(load, cwd="/", capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "the bento"
    # `bentoml serve recstack:<version>` imports the environment's recstack first (it tries the tag as
    # module:attribute): the bento's own sources must still win, submodules included.
    (tmp_path / "recstack" / "where.py").write_text("WHERE = 'the bento'\n")
    (tmp_path / "service.py").write_text(
        "import os\nimport sys\nfrom pathlib import Path\nimport recstack, recstack.serving\n"
        "assert 'bento' not in recstack.__file__\n"
        + block
        + "import recstack\nfrom recstack.where import WHERE\nprint(recstack.BUILT_WITH, WHERE)\n"
    )
    run = subprocess.run(load, cwd="/", capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "the bento the bento"
    # Without a recstack folder beside it (bentos/ in a checkout), the installed package is imported.
    shutil.rmtree(tmp_path / "recstack")
    (tmp_path / "service.py").write_text(
        "import os\nimport sys\nfrom pathlib import Path\n"
        + block
        + "import recstack\nprint(recstack.__file__)\n"
    )
    run = subprocess.run(load, cwd="/", capture_output=True, text=True, check=True)
    assert str(tmp_path) not in run.stdout and "recstack" in run.stdout
