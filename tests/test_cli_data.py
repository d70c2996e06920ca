"""`kiwi convert`, `kiwi corpus` and the CLI's one-line errors, through the installed console script."""

from __future__ import annotations

from pathlib import Path

from support import run_kiwi
from test_first_run import github  # noqa: F401 (the local GitHub stand-in fixture)

from recommender import corpora
from recommender.corpora import SHARED_MTSAMPLES
from recommender.formats import brat


def test_convert_brat_to_jsonl_and_back(sample_dir: Path, tmp_path: Path) -> None:
    out = run_kiwi("convert", str(sample_dir), str(tmp_path / "notes.jsonl"), "--to", "jsonl")
    assert out.returncode == 0, out.stderr
    back = run_kiwi("convert", str(tmp_path / "notes.jsonl"), str(tmp_path / "brat"), "--to", "brat")
    assert back.returncode == 0, back.stderr
    a, b = brat.read(sample_dir), brat.read(tmp_path / "brat")
    assert [[s.key for s in d.spans] for d in a] == [[s.key for s in d.spans] for d in b]


def test_bad_input_is_one_line_naming_the_file(tmp_path: Path) -> None:
    missing = run_kiwi("convert", str(tmp_path / "nowhere"), str(tmp_path / "out"), "--to", "brat")
    assert missing.returncode == 2
    assert str(tmp_path / "nowhere") in missing.stderr
    assert "Traceback" not in missing.stderr and len(missing.stderr.strip().splitlines()) == 1

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "n.txt").write_text("pain")
    (tmp_path / "bad" / "n.ann").write_text("T1\tproblem 0 99\tpain\n")
    bad = run_kiwi("convert", str(tmp_path / "bad"), str(tmp_path / "out"), "--to", "jsonl")
    assert bad.returncode == 2 and "n.ann" in bad.stderr and "Traceback" not in bad.stderr

    unknown = run_kiwi("convert", str(tmp_path / "bad"), str(tmp_path / "out"), "--to", "docx")
    assert unknown.returncode == 2 and "[docx]" in unknown.stderr


def test_corpus_list_names_the_shared_corpus_and_whether_it_is_here() -> None:
    listing = run_kiwi("corpus", "list", columns=400)
    assert listing.returncode == 0, listing.stderr
    rows = [[c.strip() for c in x.split("│")[1:-1]] for x in listing.stdout.splitlines() if "│" in x]
    (row,) = [r for r in rows if r[0] == "mtsamples"]
    assert row[2:] == [str(SHARED_MTSAMPLES), "yes" if SHARED_MTSAMPLES.is_dir() else "no"]


def test_corpus_fetch_without_internet_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    # Port 9 on loopback refuses: the same answer as a hospital network without a route to GitHub.
    api = {"KIWI_CORPUS_API": "http://127.0.0.1:9/repos/x/kiwi"}
    fetch = run_kiwi("corpus", "fetch", str(tmp_path / "kiwi"), env=api)
    assert fetch.returncode == 2, fetch.stderr
    assert "internet" in fetch.stderr and "127.0.0.1:9" in fetch.stderr
    assert "Traceback" not in fetch.stderr and len(fetch.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "kiwi").exists()


def test_corpus_fetch_downloads_checks_and_cites(
    github: tuple[str, Path, dict[str, bytes]],  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    base, served, _ = github
    fetch = run_kiwi("corpus", "fetch", str(tmp_path / "kiwi"), env={"KIWI_CORPUS_API": base})
    assert fetch.returncode == 0, fetch.stderr
    assert "fetched 30 notes" in fetch.stderr and "Test licence" in fetch.stderr
    assert corpora.KIWI_CITATION[:40] in fetch.stderr
    got = sorted(p.name for p in (tmp_path / "kiwi").iterdir() if p.name != corpora.FETCH_MANIFEST)
    assert got == sorted(p.name for p in served.iterdir())
    assert corpora.fetched_corpus(tmp_path / "kiwi") == tmp_path / "kiwi"
