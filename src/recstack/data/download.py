"""Download, verify and extract the MovieLens archives published by GroupLens.

MovieLens' licence forbids redistribution, so the project never ships the data: each user downloads it
from GroupLens with :func:`download_movielens`, which checks the archive against a known checksum before
extracting it. Layout after a download into ``dest_dir``::

    <dest_dir>/ml-100k/u.data ...                 # the archive's single top folder, flattened
    <dest_dir>/ml-100k/.recstack-download.json    # where it came from and the archive's digests

Checksums (``ARCHIVES``): SHA-256 and byte sizes as recorded in TensorFlow Datasets'
``tensorflow_datasets/url_checksums/movielens.txt``; MD5s as published by GroupLens next to each archive
(``https://files.grouplens.org/datasets/movielens/ml-*.zip.md5``). Every listed digest must match.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from recstack.data.schema import DataError

log = logging.getLogger(__name__)

GROUPLENS_BASE_URL = "https://files.grouplens.org/datasets/movielens"
MARKER_FILE = ".recstack-download.json"
CHECKSUM_ALGORITHMS = ("sha256", "md5")
# Files whose folder is "the dataset directory" the adapters read (100K, 1M, CSV releases).
DATASET_MARKERS = ("u.data", "ratings.dat", "ratings.csv")
DOWNLOAD_TIMEOUT_S = 60.0  # per network operation, not for the whole (up to 260 MB) transfer
_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Archive:
    """One downloadable MovieLens archive.

    Attributes:
        url: the official GroupLens URL.
        checksums: ``"<algorithm>:<hex>"`` digests the archive must match; empty when unknown.
        size_bytes: the expected size (reported on mismatch), ``None`` when unknown.
        note: why the checksum is missing or may go stale.
    """

    url: str
    checksums: tuple[str, ...]
    size_bytes: int | None = None
    note: str = ""


_LATEST_NOTE = (
    "GroupLens regenerates the 'latest' archives from time to time, so a published digest can go stale: "
    "on a mismatch check https://files.grouplens.org/datasets/movielens/{name}.zip.md5 and pass "
    "checksum='md5:<that value>'."
)

ARCHIVES: dict[str, Archive] = {
    "ml-100k": Archive(
        f"{GROUPLENS_BASE_URL}/ml-100k.zip",
        (
            "sha256:50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
            "md5:0e33842e24a9c977be4e0107933c0723",
        ),
        4_924_029,
    ),
    "ml-1m": Archive(
        f"{GROUPLENS_BASE_URL}/ml-1m.zip",
        (
            "sha256:a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
            "md5:c4d9eecfca2ab87c1945afe126590906",
        ),
        5_917_549,
    ),
    "ml-20m": Archive(
        f"{GROUPLENS_BASE_URL}/ml-20m.zip",
        (
            "sha256:96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
            "md5:cd245b17a1ae2cc31bb14903e1204af3",
        ),
        198_702_078,
    ),
    "ml-25m": Archive(
        f"{GROUPLENS_BASE_URL}/ml-25m.zip",
        (
            "sha256:8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
            "md5:6b51fb2759a8657d3bfcbfc42b592ada",
        ),
        261_978_986,
    ),
    "ml-latest-small": Archive(
        f"{GROUPLENS_BASE_URL}/ml-latest-small.zip",
        ("sha256:696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",),
        978_202,
        note=_LATEST_NOTE.format(name="ml-latest-small"),
    ),
    # No digest recorded anywhere we could check, and the archive changes with each regeneration: the caller
    # must pass one (GroupLens' ml-latest.zip.md5) or opt out with verify=False.
    "ml-latest": Archive(
        f"{GROUPLENS_BASE_URL}/ml-latest.zip", (), None, note=_LATEST_NOTE.format(name="ml-latest")
    ),
}


def archive_name(name: str) -> str:
    """The ``ARCHIVES`` key for ``name``: accepts ``"ml-1m"``, ``"1m"`` and ``"movielens-1m"``.

    Raises:
        DataError: if the name is not a known archive.
    """
    key = name.strip().lower().removeprefix("movielens-").removeprefix("ml-")
    key = f"ml-{key}"
    if key not in ARCHIVES:
        raise DataError(f"unknown MovieLens archive {name!r}; known: {', '.join(ARCHIVES)}")
    return key


def parse_checksum(checksum: str) -> tuple[str, str]:
    """Split ``"sha256:<hex>"`` / ``"md5:<hex>"`` (or bare hex, told apart by length) into (algorithm, hex).

    Raises:
        DataError: if the algorithm is unsupported or the digest is not hex of the right length.
    """
    algorithm, sep, digest = checksum.strip().partition(":")
    if not sep:
        digest = algorithm
        algorithm = {64: "sha256", 32: "md5"}.get(len(digest), "")
    algorithm, digest = algorithm.lower(), digest.lower()
    expected_len = {"sha256": 64, "md5": 32}.get(algorithm)
    if (
        expected_len is None
        or len(digest) != expected_len
        or any(c not in "0123456789abcdef" for c in digest)
    ):
        raise DataError(
            f"checksum {checksum!r} is not '<algorithm>:<hex>' with algorithm in {CHECKSUM_ALGORITHMS} "
            "(or 64 / 32 bare hex digits for sha256 / md5)"
        )
    return algorithm, digest


def _open_source(url: str) -> BinaryIO:
    """A binary stream for an http(s)/file URL or a plain local path (offline mirrors, tests)."""
    if "://" in url:
        try:
            return urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise DataError(
                f"cannot open {url}: {err}. Check the network or pass url= for a local copy"
            ) from err
    try:
        return Path(url).expanduser().open("rb")
    except OSError as err:
        raise DataError(f"cannot open the local archive {url}: {err}") from err


def _fetch(url: str, part: Path) -> dict[str, str]:
    """Copy ``url`` into ``part`` and return its digests ({algorithm: hex}); ``part`` removed on failure."""
    hashes = {algorithm: hashlib.new(algorithm) for algorithm in CHECKSUM_ALGORITHMS}
    try:
        with _open_source(url) as source, part.open("wb") as sink:
            while chunk := source.read(_CHUNK_BYTES):
                sink.write(chunk)
                for h in hashes.values():
                    h.update(chunk)
    except (OSError, urllib.error.URLError) as err:
        part.unlink(missing_ok=True)
        raise DataError(f"download of {url} failed: {err}") from err
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return {algorithm: h.hexdigest() for algorithm, h in hashes.items()}


def _mismatches(expected: list[tuple[str, str]], actual: dict[str, str]) -> list[str]:
    return [
        f"{algorithm} expected {digest}, got {actual[algorithm]}"
        for algorithm, digest in expected
        if actual[algorithm] != digest
    ]


def _dataset_root(directory: Path) -> Path | None:
    """The shallowest folder under ``directory`` holding one of ``DATASET_MARKERS``."""
    found = [p.parent for marker in DATASET_MARKERS for p in directory.rglob(marker)]
    return min(found, key=lambda p: (len(p.parts), str(p))) if found else None


def _extract(archive: Path, staging: Path) -> Path:
    """Extract into ``staging`` and return the folder to install (the single top folder, if any)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            # extractall strips absolute paths and ".." parts, so members cannot escape `staging`.
            zf.extractall(staging)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{archive} is not a readable zip archive ({err})") from err
    entries = [p for p in staging.iterdir() if p.name != "__MACOSX"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else staging


def _expected_checksums(key: str, checksum: str | None, verify: bool) -> list[tuple[str, str]]:
    if not verify:
        if checksum is not None:
            raise DataError("pass either checksum= or verify=False, not both")
        return []
    if checksum is not None:
        return [parse_checksum(checksum)]
    entry = ARCHIVES[key]
    if not entry.checksums:
        raise DataError(
            f"no known checksum for {key}: pass checksum='md5:<hex>' or 'sha256:<hex>' "
            f"(GroupLens publishes {entry.url}.md5), or verify=False to accept an unverified archive. "
            f"{entry.note}"
        )
    return [parse_checksum(c) for c in entry.checksums]


def _reuse(target: Path, expected: list[tuple[str, str]]) -> Path:
    """Return the dataset folder of an earlier download if it matches ``expected``; else raise."""
    marker = target / MARKER_FILE
    if not marker.is_file():
        raise DataError(
            f"{target} exists but was not made by download_movielens (no {MARKER_FILE}): point data.path at "
            "it directly, remove it, or pass force=True to replace it"
        )
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"{marker} is unreadable ({err}): pass force=True to download again") from err
    # The archive's digests were recorded at download time, so an extraction made with verify=False can
    # still be checked against a checksum given now.
    digests = {
        algorithm: record.get("digests", {}).get(algorithm, "unknown") for algorithm in CHECKSUM_ALGORITHMS
    }
    wrong = "; ".join(_mismatches(expected, digests))
    if wrong:
        raise DataError(
            f"{target} holds an archive that does not match the expected checksum ({wrong}); "
            "pass force=True to download it again"
        )
    if not expected and record.get("verified") is False:
        log.warning("reusing %s, which was extracted without checksum verification", target)
    root = _dataset_root(target)
    if root is None:
        raise DataError(
            f"{target} no longer holds {' / '.join(DATASET_MARKERS)}: pass force=True to re-download"
        )
    return root


def _install(staged: Path, target: Path, force: bool) -> None:
    """Move ``staged`` to ``target`` with renames only, so readers never see a half-extracted folder."""
    trash: Path | None = None
    if target.exists():
        if not force:
            return  # another process installed it while we downloaded: keep theirs
        trash = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(trash)
    staged.rename(target)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)


def download_movielens(
    name: str,
    dest_dir: str | Path,
    *,
    url: str | None = None,
    checksum: str | None = None,
    force: bool = False,
    verify: bool = True,
) -> Path:
    """Download a MovieLens archive, verify it and extract it into ``dest_dir/<name>/``.

    Args:
        name: ``"ml-100k"``, ``"ml-1m"``, ``"ml-20m"``, ``"ml-25m"``, ``"ml-latest-small"`` or
            ``"ml-latest"`` (``"100k"`` and ``"movielens-100k"`` also work).
        dest_dir: where the ``<name>/`` folder goes (created if needed).
        url: another source for the same archive: an http(s) or ``file://`` URL or a local path.
        checksum: ``"sha256:<hex>"`` / ``"md5:<hex>"`` overriding the table (needed for ``ml-latest``).
        force: download and replace even if a verified extraction exists.
        verify: ``False`` accepts an archive without any checksum check (must be asked for explicitly).

    Returns:
        The extracted dataset folder (the one holding ``u.data``, ``ratings.dat`` or ``ratings.csv``).

    Raises:
        DataError: for an unknown name, no known checksum (and ``verify=True``), a failed download, a
            checksum mismatch (the partial file is deleted), or an archive without MovieLens files.
    """
    key = archive_name(name)
    expected = _expected_checksums(key, checksum, verify)
    dest = Path(dest_dir)
    target = dest / key
    if target.exists() and not force:
        return _reuse(target, expected)

    source = url or ARCHIVES[key].url
    dest.mkdir(parents=True, exist_ok=True)
    # Temp files sit in dest_dir so the final rename stays on one filesystem (atomic).
    fd, part_name = tempfile.mkstemp(prefix=f".{key}.", suffix=".zip.part", dir=dest)
    os.close(fd)
    part = Path(part_name)
    log.info("downloading %s from %s", key, source)
    digests = _fetch(source, part)
    wrong = _mismatches(expected, digests)
    if wrong:
        size = ARCHIVES[key].size_bytes if checksum is None else None
        size_note = f" ({part.stat().st_size:,} bytes" + (f", expected {size:,})" if size else ")")
        part.unlink(missing_ok=True)
        raise DataError(
            f"checksum mismatch for {key} from {source}{size_note}: {'; '.join(wrong)}. The download was "
            f"deleted. Retry, check the URL, or pass the right checksum=. {ARCHIVES[key].note}".rstrip()
        )
    staging = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".extract", dir=dest))
    try:
        staged = _extract(part, staging)
        root = _dataset_root(staged)
        if root is None:
            raise DataError(f"{source} holds none of {', '.join(DATASET_MARKERS)}: not a MovieLens archive")
        record = {"name": key, "url": source, "digests": digests, "verified": bool(expected)}
        (staged / MARKER_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        relative = root.relative_to(staged)
        _install(staged, target, force)
    finally:
        part.unlink(missing_ok=True)
        shutil.rmtree(staging, ignore_errors=True)
    return target / relative
