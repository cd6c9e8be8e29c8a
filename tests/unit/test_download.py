"""MovieLens download: verification, atomic extraction and reuse, all offline (file:// URLs, local paths)."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from recstack.data.download import (
    ARCHIVES,
    GROUPLENS_BASE_URL,
    MARKER_FILE,
    archive_name,
    download_movielens,
    parse_checksum,
)
from recstack.data.schema import DataError


def _zip(path: Path, files: dict[str, str]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    files = {
        "ml-100k/u.data": "1\t2\t3\t881250949\n",
        "ml-100k/u.item": "2|X (1995)|||\n",
        "ml-100k/u.user": "",
    }
    return _zip(tmp_path / "ml-100k.zip", files)


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if p.name.startswith("."))


def test_file_url_download_verifies_and_flattens(tmp_path: Path, archive: Path) -> None:
    dest = tmp_path / "raw"
    out = download_movielens("ml-100k", dest, url=archive.as_uri(), checksum=_sha256(archive))
    assert out == dest / "ml-100k"
    assert (out / "u.data").read_text().startswith("1\t2")
    assert (out / MARKER_FILE).is_file()
    assert _leftovers(dest) == []  # no .part file or staging folder left behind


def test_plain_path_and_md5(tmp_path: Path, archive: Path) -> None:
    md5 = "md5:" + hashlib.md5(archive.read_bytes()).hexdigest()
    out = download_movielens("100k", tmp_path / "raw", url=str(archive), checksum=md5)
    assert (out / "u.data").is_file()


def test_checksum_mismatch_deletes_download(tmp_path: Path, archive: Path) -> None:
    dest = tmp_path / "raw"
    wrong = "sha256:" + "0" * 64
    with pytest.raises(DataError, match=r"checksum mismatch.*expected 0{64}, got [0-9a-f]{64}.*deleted"):
        download_movielens("ml-100k", dest, url=archive.as_uri(), checksum=wrong)
    assert not (dest / "ml-100k").exists()
    assert list(dest.iterdir()) == []


def test_table_checksum_applies_to_a_mirror(tmp_path: Path, archive: Path) -> None:
    # Our tiny zip is not the real archive: the published digest must reject it.
    with pytest.raises(DataError, match=r"sha256 expected 50d2a982.*md5 expected 0e33842e"):
        download_movielens("ml-100k", tmp_path / "raw", url=str(archive))


def test_existing_extraction_is_reused(tmp_path: Path, archive: Path) -> None:
    dest = tmp_path / "raw"
    checksum = _sha256(archive)
    first = download_movielens("ml-100k", dest, url=archive.as_uri(), checksum=checksum)
    (first / "u.data").write_text("kept\n")
    archive.unlink()  # a second download would now fail: reuse must not download
    again = download_movielens("ml-100k", dest, url=archive.as_uri(), checksum=checksum)
    assert again == first and (again / "u.data").read_text() == "kept\n"
    with pytest.raises(DataError, match="does not match the expected checksum"):
        download_movielens("ml-100k", dest, checksum="sha256:" + "1" * 64)


def test_force_replaces(tmp_path: Path, archive: Path) -> None:
    dest = tmp_path / "raw"
    out = download_movielens("ml-100k", dest, url=str(archive), checksum=_sha256(archive))
    (out / "u.data").write_text("stale\n")
    out = download_movielens("ml-100k", dest, url=str(archive), checksum=_sha256(archive), force=True)
    assert (out / "u.data").read_text().startswith("1\t2")
    assert _leftovers(dest) == []


def test_foreign_folder_is_not_overwritten(tmp_path: Path, archive: Path) -> None:
    (tmp_path / "raw" / "ml-100k").mkdir(parents=True)
    with pytest.raises(DataError, match="not made by download_movielens"):
        download_movielens("ml-100k", tmp_path / "raw", url=str(archive), checksum=_sha256(archive))


def test_unknown_checksum_must_be_given_or_waived(tmp_path: Path) -> None:
    latest = _zip(tmp_path / "ml-latest.zip", {"ml-latest/ratings.csv": "userId,movieId,rating,timestamp\n"})
    with pytest.raises(DataError, match=r"no known checksum for ml-latest.*verify=False"):
        download_movielens("ml-latest", tmp_path / "raw", url=str(latest))
    out = download_movielens("ml-latest", tmp_path / "raw", url=str(latest), verify=False)
    assert (out / "ratings.csv").is_file()
    with pytest.raises(DataError, match="either checksum= or verify=False"):
        download_movielens("ml-latest", tmp_path / "raw", checksum=_sha256(latest), verify=False)


def test_archive_without_movielens_files_is_rejected(tmp_path: Path) -> None:
    junk = _zip(tmp_path / "junk.zip", {"readme.txt": "hello"})
    dest = tmp_path / "raw"
    with pytest.raises(DataError, match="not a MovieLens archive"):
        download_movielens("ml-1m", dest, url=str(junk), checksum=_sha256(junk))
    assert list(dest.iterdir()) == []


def test_missing_source_and_bad_zip(tmp_path: Path) -> None:
    dest = tmp_path / "raw"
    with pytest.raises(DataError, match="cannot open"):
        download_movielens("ml-1m", dest, url=(tmp_path / "absent.zip").as_uri(), verify=False)
    not_zip = tmp_path / "x.zip"
    not_zip.write_text("not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        download_movielens("ml-1m", dest, url=str(not_zip), verify=False)
    assert list(dest.iterdir()) == []


def test_names_and_checksum_parsing() -> None:
    assert archive_name("movielens-25m") == archive_name("25m") == "ml-25m"
    with pytest.raises(DataError, match="known: ml-100k"):
        archive_name("ml-10m")
    assert parse_checksum("SHA256:" + "A" * 64) == ("sha256", "a" * 64)
    assert parse_checksum("b" * 32) == ("md5", "b" * 32)
    with pytest.raises(DataError, match="not '<algorithm>:<hex>'"):
        parse_checksum("sha1:abc")


def test_archive_table() -> None:
    assert set(ARCHIVES) == {"ml-100k", "ml-1m", "ml-20m", "ml-25m", "ml-latest-small", "ml-latest"}
    for name, entry in ARCHIVES.items():
        assert entry.url == f"{GROUPLENS_BASE_URL}/{name}.zip"
        for checksum in entry.checksums:
            parse_checksum(checksum)
        assert entry.checksums or entry.note  # an unknown checksum is explained, never silently skipped
