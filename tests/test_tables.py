"""Terminal tables (flows.tables): whole values in a pipe, no trailing blanks, ``—`` for none."""

from __future__ import annotations

import pytest

from flows.tables import print_table


def test_a_piped_table_keeps_long_values_whole_and_lines_clean(
    capsys: pytest.CaptureFixture[str],
) -> None:
    reason = "the champion moved while this run was going: re-run it " * 3
    print_table(["version", "reason"], [["v1", reason.strip()], ["v22", None]])
    header, first, second = capsys.readouterr().out.splitlines()
    assert header.split() == ["VERSION", "REASON"]
    assert first.endswith(reason.strip()) and len(first) > 120  # not cut at 80 columns
    assert second.split() == ["v22", "—"]
    assert all(line == line.rstrip() for line in (header, first, second))
