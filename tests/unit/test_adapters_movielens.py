"""MovieLens adapters on tiny hand-written folders of each layout, plus one check on the real 100K."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from recstack.data.adapters.movielens import (
    ML100K_GENRE_NAMES,
    load_movielens_1m,
    load_movielens_100k,
    load_movielens_csv,
)
from recstack.data.schema import (
    CATEGORIES,
    CATEGORIES_DTYPE,
    CREATED_AT,
    INTERACTION_COLUMNS,
    ITEM_ID,
    TIMESTAMP_DTYPE,
    USER_ID,
    DataError,
)

# MovieLens' licence forbids copying it into the repo: the real 100K lives in the shared data folder.
REAL_ML100K = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "ml-100k"

GOOD_RATING = ("196", "242", "3", "881250949")


def _write(path: Path, text: str, encoding: str = "utf-8") -> None:
    path.write_bytes(text.encode(encoding))


def _flags(*on: int) -> str:
    return "|".join("1" if i in on else "0" for i in range(19))


@pytest.fixture
def ml100k(tmp_path: Path) -> Path:
    d = tmp_path / "ml-100k"
    d.mkdir()
    _write(
        d / "u.data",
        "196\t242\t3\t881250949\n"
        "\t242\t4\tnotatime\n"  # empty user id + bad timestamp: must survive as a raw row
        "7\t8\n",  # short line: missing fields become null
    )
    _write(
        d / "u.item",
        f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|{_flags(5)}\n"
        f"243|Les Misérables (1995)|01-Jan-1995||http://imdb/x|{_flags(1, 2)}\n"
        f"267|unknown||||{_flags(0)}\n",
        encoding="latin-1",
    )
    _write(d / "u.user", "196|49|M|writer|55105\n7|57|M|administrator|91344\n")
    _write(d / "u.genre", "".join(f"{name}|{i}\n" for i, name in enumerate(ML100K_GENRE_NAMES)) + "\n")
    return d


def test_100k_interactions_keep_raw_text(ml100k: Path) -> None:
    raw = load_movielens_100k(ml100k)
    assert isinstance(raw.interactions, pl.LazyFrame)
    assert raw.timestamp_format == "unix_s"
    inter = raw.interactions.collect()
    assert tuple(inter.columns) == INTERACTION_COLUMNS
    assert all(dtype == pl.String for dtype in inter.dtypes)
    assert inter.height == 3
    assert inter.row(0) == ("196", "242", "881250949", "rating", "3")
    # The malformed line survives: null user id, the timestamp text as written.
    assert inter.row(1) == (None, "242", "notatime", "rating", "4")
    assert inter.row(2) == ("7", "8", None, "rating", None)


def test_100k_items_and_users(ml100k: Path) -> None:
    raw = load_movielens_100k(ml100k)
    assert raw.items is not None and raw.users is not None
    items = raw.items.collect()
    assert items.schema[CATEGORIES] == CATEGORIES_DTYPE
    assert items.schema[CREATED_AT] == TIMESTAMP_DTYPE
    assert items.schema["year"] == pl.Int64
    by_id = {row[ITEM_ID]: row for row in items.iter_rows(named=True)}
    assert by_id["242"][CATEGORIES] == ["Comedy"]
    assert by_id["243"]["title"] == "Les Misérables (1995)"  # Latin-1 decoded
    assert by_id["243"][CATEGORIES] == ["Action", "Adventure"]
    assert by_id["242"][CREATED_AT].isoformat() == "1997-01-24T00:00:00+00:00"
    assert by_id["242"]["year"] == 1996  # from the title, not the release date
    assert by_id["267"][CREATED_AT] is None and by_id["267"]["release_date"] is None
    users = raw.users.collect()
    assert users.columns == [USER_ID, "age", "gender", "occupation", "zip_code"]
    assert users.schema["age"] == pl.Int64
    assert users.row(0) == ("196", 49, "M", "writer", "55105")


def test_100k_without_u_genre_uses_standard_names(ml100k: Path) -> None:
    (ml100k / "u.genre").unlink()
    items = load_movielens_100k(ml100k).items
    assert items is not None
    assert items.filter(pl.col(ITEM_ID) == "243").collect()[CATEGORIES].to_list() == [["Action", "Adventure"]]


def test_100k_missing_file_names_it(ml100k: Path) -> None:
    (ml100k / "u.item").unlink()
    with pytest.raises(DataError, match=r"u\.item is missing.*u\.data"):
        load_movielens_100k(ml100k)


def test_nested_extraction_folder_is_found(ml100k: Path) -> None:
    # dest/ml-100k/ml-100k/u.data, as an archive extracted "as is" leaves it.
    assert load_movielens_100k(ml100k.parent).interactions.collect().height == 3


def test_wrong_loader_hints_at_the_right_source(ml100k: Path) -> None:
    with pytest.raises(DataError, match="movielens-100k"):
        load_movielens_1m(ml100k)


@pytest.fixture
def ml1m(tmp_path: Path) -> Path:
    d = tmp_path / "ml-1m"
    d.mkdir()
    _write(d / "ratings.dat", "1::1193::5::978300760\r\n::1193::5::notatime\r\n2::3::4::1::extra\r\n")
    _write(
        d / "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "73::Misérables, Les (1995)::Drama|Musical\n"
        "99::No Genre (2000)::\n",
        encoding="latin-1",
    )
    _write(d / "users.dat", "1::F::1::10::48067\n2::M::56::16::70072\n3::M::25::99::x\n")
    return d


def test_1m_layout(ml1m: Path) -> None:
    raw = load_movielens_1m(ml1m)
    assert raw.timestamp_format == "unix_s"
    inter = raw.interactions.collect()
    assert inter.row(0) == ("1", "1193", "978300760", "rating", "5")  # CRLF stripped
    assert inter.row(1) == (None, "1193", "notatime", "rating", "5")
    assert inter.row(2)[2] == "1::extra"  # surplus fields stay visible for validation to reject
    assert raw.items is not None and raw.users is not None
    items = raw.items.collect()
    assert items[CATEGORIES].to_list() == [["Animation", "Children's", "Comedy"], ["Drama", "Musical"], []]
    assert items["title"][1] == "Misérables, Les (1995)"
    assert items["year"].to_list() == [1995, 1995, 2000]
    assert items.schema[CREATED_AT] == TIMESTAMP_DTYPE and items[CREATED_AT].null_count() == 3
    users = raw.users.collect()
    assert users.columns == [USER_ID, "gender", "age", "occupation", "zip_code"]
    assert users["age"].to_list() == [1, 56, 25]
    assert users["occupation"].to_list() == ["K-12 student", "self-employed", "99"]


def test_1m_missing_users_file(ml1m: Path) -> None:
    (ml1m / "users.dat").unlink()
    with pytest.raises(DataError, match=r"users\.dat is missing"):
        load_movielens_1m(ml1m)


@pytest.fixture
def ml20m(tmp_path: Path) -> Path:
    d = tmp_path / "ml-20m"
    d.mkdir()
    _write(d / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n,2,4.0,notatime\n1,29\n")
    _write(
        d / "movies.csv",
        "movieId,title,genres\n"
        '1,"American President, The (1995)",Comedy|Drama|Romance\n'
        "2,Hellboy (2004),(no genres listed)\n"
        "3,Babylon 5 (1994–1998),Sci-Fi\n"
        "4,Untitled,Drama\n",
    )
    _write(d / "links.csv", "movieId,imdbId,tmdbId\n1,0112346,9087\n2,0167190,\n")
    return d


def test_csv_layout(ml20m: Path) -> None:
    raw = load_movielens_csv(ml20m)
    assert raw.users is None and raw.timestamp_format == "unix_s"
    inter = raw.interactions.collect()
    assert tuple(inter.columns) == INTERACTION_COLUMNS
    assert inter.rows() == [
        ("1", "2", "1112486027", "rating", "3.5"),
        (None, "2", "notatime", "rating", "4.0"),
        ("1", "29", None, "rating", None),
    ]
    assert raw.items is not None
    items = raw.items.collect()
    assert items[CATEGORIES].to_list() == [["Comedy", "Drama", "Romance"], [], ["Sci-Fi"], ["Drama"]]
    assert items["title"][0] == "American President, The (1995)"
    assert items["year"].to_list() == [1995, 2004, 1994, None]
    assert items["imdb_id"].to_list() == ["0112346", "0167190", None, None]


def test_csv_rejects_unexpected_header(ml20m: Path) -> None:
    _write(ml20m / "ratings.csv", "user,item,rating,ts\n1,2,3,4\n")
    with pytest.raises(DataError, match="userId,movieId,rating,timestamp"):
        load_movielens_csv(ml20m)


def test_csv_missing_movies(ml20m: Path) -> None:
    (ml20m / "movies.csv").unlink()
    with pytest.raises(DataError, match=r"movies\.csv is missing"):
        load_movielens_csv(ml20m)


@pytest.mark.skipif(
    not (REAL_ML100K / "u.data").is_file(), reason=f"MovieLens 100K not found at {REAL_ML100K}"
)
def test_real_movielens_100k() -> None:
    raw = load_movielens_100k(REAL_ML100K)
    inter = raw.interactions.collect()
    assert inter.height == 100_000
    assert inter.null_count().sum_horizontal().item() == 0
    assert raw.items is not None and raw.users is not None
    items = raw.items.collect()
    assert items.height == 1682
    assert items.schema[CATEGORIES] == CATEGORIES_DTYPE
    assert set(items[CATEGORIES].explode().drop_nulls().unique()) == set(ML100K_GENRE_NAMES)  # all 19
    assert items[CATEGORIES].list.len().min() >= 1  # every 100K movie has at least one genre flag
    assert raw.users.collect().height == 943
