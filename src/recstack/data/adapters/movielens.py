"""MovieLens adapters: 100K (``u.*``), 1M (``*.dat``) and the CSV releases (20M, 25M, latest, latest-small).

Each loader maps a dataset directory onto the canonical column names and returns a :class:`RawData`:

* ``interactions`` (lazy): ``user_id, item_id, timestamp, event_type, value``. Every value is the raw text
  of the file (``String``) except ``event_type``, the literal ``"rating"``. Empty fields are ``null``.
  ``timestamp_format`` is ``"unix_s"``.
* ``items``: ``item_id`` (String), ``title`` (String), ``categories`` (List[String], possibly empty),
  ``created_at`` (``Datetime("us", "UTC")``, null where unknown), ``year`` (Int64) plus per-release
  attributes (``release_date``, ``imdb_url`` for 100K; ``imdb_id``, ``tmdb_id`` for the CSV releases).
* ``users``: ``user_id`` (String) plus ``age``, ``gender``, ``occupation``, ``zip_code``; ``None`` for the
  CSV releases, which publish no user file.

Nothing is dropped or repaired: the rating files are read line by line and split on the separator, so a
line with an empty id, a missing field or a non-numeric timestamp stays a row (fields missing from a short
line are ``null``; surplus fields of a long line stay glued to the last one) for validation to quarantine
with its original text. Item and user attributes are parsed here (``created_at``, ``year``, ``age``) with
unparseable values becoming ``null``: they describe the catalogue rather than events, and 100K keeps the
raw ``release_date`` text next to the parsed ``created_at``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import polars as pl

from recstack.data.schema import (
    CATEGORIES,
    CATEGORIES_DTYPE,
    CREATED_AT,
    EVENT_TYPE,
    INTERACTION_COLUMNS,
    ITEM_ID,
    TIMESTAMP,
    TIMESTAMP_DTYPE,
    TITLE,
    USER_ID,
    VALUE,
    DataError,
    RawData,
)

# --- file names and layouts (named in error messages) -------------------------------------------------
ML100K_RATINGS, ML100K_ITEMS, ML100K_USERS, ML100K_GENRES = "u.data", "u.item", "u.user", "u.genre"
ML1M_RATINGS, ML1M_MOVIES, ML1M_USERS = "ratings.dat", "movies.dat", "users.dat"
CSV_RATINGS, CSV_MOVIES, CSV_LINKS = "ratings.csv", "movies.csv", "links.csv"
CSV_RATINGS_HEADER = "userId,movieId,rating,timestamp"

LAYOUT_100K = f"{ML100K_RATINGS} (tab-separated), {ML100K_ITEMS} and {ML100K_USERS} (pipe-separated)"
LAYOUT_1M = f"{ML1M_RATINGS}, {ML1M_MOVIES} and {ML1M_USERS} ('::'-separated)"
LAYOUT_CSV = f"{CSV_RATINGS} ({CSV_RATINGS_HEADER}) and {CSV_MOVIES} (movieId,title,genres)"

RATING_EVENT = "rating"
MOVIELENS_TIMESTAMP_FORMAT = "unix_s"
NO_GENRES = "(no genres listed)"  # the CSV releases' marker for an empty genre list

# Fallback when u.genre is absent: the 19 flag columns of u.item in file order (from the 100K README).
ML100K_GENRE_NAMES: tuple[str, ...] = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip

# 1M users.dat codes occupations 0-20; names from the 1M README.
ML1M_OCCUPATIONS: dict[str, str] = {
    "0": "other", "1": "academic/educator", "2": "artist", "3": "clerical/admin", "4": "college/grad student",
    "5": "customer service", "6": "doctor/health care", "7": "executive/managerial", "8": "farmer",
    "9": "homemaker", "10": "K-12 student", "11": "lawyer", "12": "programmer", "13": "retired",
    "14": "sales/marketing", "15": "scientist", "16": "self-employed", "17": "technician/engineer",
    "18": "tradesman/craftsman", "19": "unemployed", "20": "writer",
}  # fmt: skip

# "Toy Story (1995)", "Babylon 5 (1994-1998)", "Title (2006– )": the year is the last parenthesised 4 digits.
_TITLE_YEAR = r"\((\d{4})(?:\s*[-\u2013]\s*\d{0,4}\s*)?\)\s*$"
_LINE = "_line"
# Which source name reads which layout (for hints when a folder is given to the wrong loader).
_SOURCE_FOR_LAYOUT = {"100k": "movielens-100k", "1m": "movielens-1m", "csv": "movielens-20m/25m/latest"}
_RATING_FIELDS = (USER_ID, ITEM_ID, VALUE, TIMESTAMP)


# --- reading text without losing lines ------------------------------------------------------------------
def _scan_lines(path: Path, skip_first: bool = False) -> pl.LazyFrame:
    """Lazily read a text file as one String column holding each whole line.

    The separator is the end-of-line byte itself, so no byte inside a line can split or reject it (polars'
    CSV reader fails a whole file on one ragged line). Invalid UTF-8 bytes become U+FFFD rather than
    failing the scan: the rating files are ASCII, so this only affects corrupt lines, which then fail
    validation with their (nearly) original text.
    """
    return pl.scan_csv(
        path,
        has_header=False,
        separator="\n",
        quote_char=None,
        schema={_LINE: pl.String},
        skip_lines=1 if skip_first else 0,
        encoding="utf8-lossy",
    )


def _read_text_lines(path: Path) -> pl.LazyFrame:
    """Eagerly read a small text file of unknown encoding as one String column of lines.

    The MovieLens 100K/1M item files are Latin-1 while newer copies circulate re-encoded as UTF-8; strict
    UTF-8 is tried first because Latin-1 decodes any byte string (and would garble real UTF-8).
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line; it does not start an empty one
    return pl.DataFrame({_LINE: lines}, schema={_LINE: pl.String}).lazy()


def _split_fields(lines: pl.LazyFrame, separator: str, names: Sequence[str]) -> pl.LazyFrame:
    """Split the line column into ``names`` (all String); empty fields become null, as in polars' CSV."""
    parts = pl.col(_LINE).str.strip_suffix("\r").str.splitn(separator, len(names))
    fields = [parts.struct.field(f"field_{i}").alias(name) for i, name in enumerate(names)]
    split = lines.select(fields)
    # A field that is present but empty means "missing": null it so that an empty id is never a valid
    # String id downstream.
    return split.with_columns(pl.when(pl.col(n) != "").then(pl.col(n)).alias(n) for n in names)


def _require(directory: Path, name: str, layout: str, dataset: str) -> Path:
    path = directory / name
    if not path.is_file():
        raise DataError(
            f"{path} is missing: a {dataset} directory must hold {layout}. "
            "Point data.path at the extracted dataset folder (see recstack.data.download)."
        )
    return path


def _dataset_dir(path: str | Path, marker: str, layout: str, dataset: str) -> Path:
    """The folder holding ``marker``: ``path`` itself or its single sub-folder that has it.

    Accepting one level of nesting covers archives extracted "as is" (``dest/ml-1m/ml-1m/ratings.dat``).
    """
    directory = Path(path)
    if not directory.is_dir():
        raise DataError(f"{dataset} directory {directory} does not exist (expected {layout} inside it)")
    if (directory / marker).is_file():
        return directory
    nested = sorted(p.parent for p in directory.glob(f"*/{marker}"))
    if len(nested) == 1:
        return nested[0]
    found = ", ".join(sorted(p.name for p in directory.iterdir())[:20]) or "nothing"
    kind = looks_like(directory)
    hint = f" It looks like the MovieLens {kind} layout: use {_SOURCE_FOR_LAYOUT[kind]}." if kind else ""
    raise DataError(
        f"{directory / marker} is missing: a {dataset} directory must hold {layout}; found: {found}.{hint} "
        "Check data.path and the source name."
    )


# --- shared column expressions ---------------------------------------------------------------------------
def _ratings(lines: pl.LazyFrame, separator: str) -> pl.LazyFrame:
    fields = _split_fields(lines, separator, _RATING_FIELDS)
    return fields.with_columns(pl.lit(RATING_EVENT).alias(EVENT_TYPE)).select(INTERACTION_COLUMNS)


def _genre_list(column: str, separator: str = "|") -> pl.Expr:
    empty = pl.col(column).is_null() | pl.col(column).is_in(["", NO_GENRES])
    return (
        pl.when(empty)
        .then(pl.lit([], dtype=CATEGORIES_DTYPE))
        .otherwise(pl.col(column).str.split(separator))
        .alias(CATEGORIES)
    )


def _title_year() -> pl.Expr:
    return pl.col(TITLE).str.extract(_TITLE_YEAR, 1).cast(pl.Int64, strict=False)


def _no_created_at() -> pl.Expr:
    return pl.lit(None, dtype=TIMESTAMP_DTYPE).alias(CREATED_AT)


def _to_int(column: str) -> pl.Expr:
    return pl.col(column).str.strip_chars().cast(pl.Int64, strict=False).alias(column)


# --- MovieLens 100K ------------------------------------------------------------------------------------
def _ml100k_genre_names(directory: Path) -> list[str]:
    """Genre names in flag order from u.genre (``name|index`` lines), else the README's list."""
    path = directory / ML100K_GENRES
    if not path.is_file():
        return list(ML100K_GENRE_NAMES)
    pairs = _split_fields(_read_text_lines(path), "|", ("name", "index")).drop_nulls().collect()
    try:
        ordered = sorted((int(index), name) for name, index in pairs.iter_rows())
    except ValueError as err:
        raise DataError(f"{path}: expected 'name|index' lines with integer indices ({err})") from err
    if [index for index, _ in ordered] != list(range(len(ordered))):
        raise DataError(f"{path}: genre indices must be 0..n-1 without gaps, got {[i for i, _ in ordered]}")
    return [name for _, name in ordered]


def _ml100k_items(path: Path, genres: Sequence[str]) -> pl.LazyFrame:
    flags = [f"_genre_{i}" for i in range(len(genres))]
    names = (ITEM_ID, TITLE, "release_date", "video_release_date", "imdb_url", *flags)
    raw = _split_fields(_read_text_lines(path), "|", names)
    genre_list = (
        pl.concat_list(
            [pl.when(pl.col(f) == "1").then(pl.lit(g)) for f, g in zip(flags, genres, strict=True)]
        )
        .list.drop_nulls()
        .alias(CATEGORIES)
    )
    release = pl.col("release_date")
    # The title suffix is the film's year; the release date (video/re-release) is only a fallback.
    release_year = release.str.extract(r"(\d{4})\s*$", 1).cast(pl.Int64, strict=False)
    return raw.select(
        ITEM_ID,
        TITLE,
        genre_list,
        release.str.to_datetime("%d-%b-%Y", strict=False, time_unit="us", time_zone="UTC").alias(CREATED_AT),
        pl.coalesce(_title_year(), release_year).alias("year"),
        "release_date",
        "imdb_url",
        # video_release_date is empty in every row of the published file: not kept.
    )


def load_movielens_100k(path: str | Path) -> RawData:
    """Load MovieLens 100K from its extracted folder (``u.data``, ``u.item``, ``u.user``, ``u.genre``).

    Args:
        path: the folder holding ``u.data`` (or a folder whose single sub-folder holds it).

    Returns:
        ``RawData`` with String ids, ``value`` = the 1-5 rating as text, ``timestamp_format="unix_s"``;
        items with 19-genre ``categories``, ``created_at`` from the release date; users with ``age``
        (Int64), ``gender``, ``occupation``, ``zip_code``.

    Raises:
        DataError: if the folder or one of its required files is missing.
    """
    directory = _dataset_dir(path, ML100K_RATINGS, LAYOUT_100K, "MovieLens 100K")
    items_path = _require(directory, ML100K_ITEMS, LAYOUT_100K, "MovieLens 100K")
    users_path = _require(directory, ML100K_USERS, LAYOUT_100K, "MovieLens 100K")
    users = _split_fields(
        _read_text_lines(users_path), "|", (USER_ID, "age", "gender", "occupation", "zip_code")
    ).with_columns(_to_int("age"))
    return RawData(
        interactions=_ratings(_scan_lines(directory / ML100K_RATINGS), "\t"),
        items=_ml100k_items(items_path, _ml100k_genre_names(directory)),
        users=users,
        timestamp_format=MOVIELENS_TIMESTAMP_FORMAT,
        source="movielens-100k",
        notes=["MovieLens 100K: explicit 1-5 star ratings, value = stars"],
    )


# --- MovieLens 1M ----------------------------------------------------------------------------------------
def load_movielens_1m(path: str | Path) -> RawData:
    """Load MovieLens 1M from its extracted folder (``ratings.dat``, ``movies.dat``, ``users.dat``).

    Args:
        path: the folder holding ``ratings.dat`` (or a folder whose single sub-folder holds it).

    Returns:
        ``RawData`` with String ids, ``value`` = the 1-5 rating as text, ``timestamp_format="unix_s"``;
        items with ``categories`` from the ``A|B`` genres, ``year`` from the title, null ``created_at``;
        users with ``gender``, ``age`` (Int64 age-group code: 1, 18, 25, 35, 45, 50, 56), ``occupation``
        (the README's name for codes 0-20; any other value kept as given) and ``zip_code``.

    Raises:
        DataError: if the folder or one of its required files is missing.
    """
    directory = _dataset_dir(path, ML1M_RATINGS, LAYOUT_1M, "MovieLens 1M")
    movies_path = _require(directory, ML1M_MOVIES, LAYOUT_1M, "MovieLens 1M")
    users_path = _require(directory, ML1M_USERS, LAYOUT_1M, "MovieLens 1M")
    items = _split_fields(_read_text_lines(movies_path), "::", (ITEM_ID, TITLE, "genres")).select(
        ITEM_ID, TITLE, _genre_list("genres"), _no_created_at(), _title_year().alias("year")
    )
    users = _split_fields(
        _read_text_lines(users_path), "::", (USER_ID, "gender", "age", "occupation", "zip_code")
    ).with_columns(_to_int("age"), pl.col("occupation").replace(ML1M_OCCUPATIONS))
    return RawData(
        interactions=_ratings(_scan_lines(directory / ML1M_RATINGS), "::"),
        items=items,
        users=users.select(USER_ID, "gender", "age", "occupation", "zip_code"),
        timestamp_format=MOVIELENS_TIMESTAMP_FORMAT,
        source="movielens-1m",
        notes=["MovieLens 1M: explicit 1-5 star ratings, value = stars"],
    )


# --- MovieLens CSV releases (20M, 25M, latest, latest-small) --------------------------------------------
def _check_ratings_header(path: Path) -> None:
    with path.open("rb") as handle:
        header = handle.readline().decode("utf-8", errors="replace").strip().lstrip("\ufeff")
    if header != CSV_RATINGS_HEADER:
        raise DataError(
            f"{path}: expected the header '{CSV_RATINGS_HEADER}', got '{header[:120]}'. "
            "For other event logs use the 'events' source with a column mapping."
        )


def _csv_movies(path: Path, links_path: Path) -> pl.LazyFrame:
    # Titles hold commas inside quotes, so this needs the real CSV parser; the file is small (tens of MB at
    # most), read eagerly so that a parse error surfaces here with the file name.
    try:
        movies = pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError) as err:
        raise DataError(f"{path}: cannot be parsed as movieId,title,genres CSV ({err})") from err
    missing = {"movieId", "title", "genres"} - set(movies.columns)
    if missing:
        raise DataError(f"{path}: missing column(s) {sorted(missing)}; it has {movies.columns}")
    items = movies.lazy().select(
        pl.col("movieId").alias(ITEM_ID),
        pl.col("title").alias(TITLE),
        _genre_list("genres"),
        _no_created_at(),
        pl.col("title").str.extract(_TITLE_YEAR, 1).cast(pl.Int64, strict=False).alias("year"),
    )
    if links_path.is_file():
        links = pl.scan_csv(links_path, infer_schema=False).select(
            pl.col("movieId").alias(ITEM_ID),
            pl.col("imdbId").alias("imdb_id"),
            pl.col("tmdbId").alias("tmdb_id"),
        )
        items = items.join(links, on=ITEM_ID, how="left", maintain_order="left")
    return items


def load_movielens_csv(path: str | Path) -> RawData:
    """Load a CSV MovieLens release: 20M, 25M, latest or latest-small (``ratings.csv``, ``movies.csv``).

    ``ratings.csv`` is scanned lazily (25M is 650 MB of text; nothing is loaded until collected).
    ``tags.csv`` and the genome files are not read.

    Args:
        path: the folder holding ``ratings.csv`` (or a folder whose single sub-folder holds it).

    Returns:
        ``RawData`` with String ids, ``value`` = the 0.5-5 rating as text, ``timestamp_format="unix_s"``;
        items with ``categories`` (``"(no genres listed)"`` -> empty list), ``year`` from the title, null
        ``created_at`` and, when ``links.csv`` exists, ``imdb_id`` / ``tmdb_id`` (String); ``users=None``.

    Raises:
        DataError: if the folder or one of its required files is missing or ``ratings.csv`` has an
            unexpected header.
    """
    directory = _dataset_dir(path, CSV_RATINGS, LAYOUT_CSV, "MovieLens CSV")
    movies_path = _require(directory, CSV_MOVIES, LAYOUT_CSV, "MovieLens CSV")
    ratings_path = directory / CSV_RATINGS
    _check_ratings_header(ratings_path)
    # ratings.csv holds only numbers (never quoted), so splitting lines keeps ragged rows for validation
    # where the CSV reader would fail the whole scan.
    return RawData(
        interactions=_ratings(_scan_lines(ratings_path, skip_first=True), ","),
        items=_csv_movies(movies_path, directory / CSV_LINKS),
        users=None,
        timestamp_format=MOVIELENS_TIMESTAMP_FORMAT,
        source="movielens-csv",
        notes=["MovieLens CSV release: explicit 0.5-5 star ratings, value = stars; no user attributes"],
    )


def looks_like(path: str | Path) -> str | None:
    """The MovieLens layout a folder holds ("100k", "1m", "csv") or ``None``; used for hints in errors."""
    directory = Path(path)
    for marker, kind in ((ML100K_RATINGS, "100k"), (ML1M_RATINGS, "1m"), (CSV_RATINGS, "csv")):
        if (directory / marker).is_file() or any(directory.glob(f"*/{marker}")):
            return kind
    return None


__all__ = ["load_movielens_1m", "load_movielens_100k", "load_movielens_csv", "looks_like"]
