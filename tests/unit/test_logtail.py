"""The one log-tail reader: the last lines, read from the end of the file only."""

from __future__ import annotations

from pathlib import Path

from compose_env.logtail import last_lines


def test_the_last_lines_are_returned_in_order(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("".join(f"line {n}\n" for n in range(100)))

    assert last_lines(log, 3) == ["line 97", "line 98", "line 99"]
    assert last_lines(log, 0) == []
    assert last_lines(log, 500)[0] == "line 0"


def test_only_the_window_at_the_end_is_read(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"x" * 100 + b"\nlast\n")

    assert last_lines(log, 10, window=8) == ["xx", "last"]


def test_a_file_that_cannot_be_read_gives_one_line_saying_so(tmp_path: Path) -> None:
    assert last_lines(tmp_path / "missing.log", 25) == [f"(no log at {tmp_path / 'missing.log'})"]
