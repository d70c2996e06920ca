"""`kiwi convert`, `kiwi corpus` and the CLI's one-line errors, through the installed console script."""

from __future__ import annotations

from pathlib import Path

from support import run_kiwi

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


def test_corpus_list_and_offline_fetch(tmp_path: Path) -> None:
    listing = run_kiwi("corpus", "list")
    assert listing.returncode == 0 and "mtsamples" in listing.stdout
    # This machine has no route to GitHub: the fetch must fail with one clear line, not hang or crash.
    fetch = run_kiwi("corpus", "fetch", str(tmp_path / "kiwi"))
    assert fetch.returncode in (0, 2)
    if fetch.returncode == 2:
        assert "internet" in fetch.stderr and "Traceback" not in fetch.stderr
