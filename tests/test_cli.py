"""The mmgen command line: the demo runs end to end; errors exit non-zero with a message."""

import pytest

from mmgen.cli import main


def test_demo_generates_and_reports_speed(capsys):
    assert main(["demo", "--num-samples", "2", "--num-tokens", "8"]) == 0
    out = capsys.readouterr().out
    assert "2 samples x 8 tokens" in out
    rows = [line for line in out.splitlines() if line.strip().startswith("class")]
    assert len(rows) == 2 and all(len(r.split(":")[1].split()) == 9 for r in rows)  # 8 ids and "..."
    assert "tokens/s" in out


def test_demo_error_exits_non_zero(capsys):
    assert main(["demo", "--num-tokens", "5000"]) == 2
    assert "beyond max_seq_len" in capsys.readouterr().err


def test_unknown_command_is_rejected():
    with pytest.raises(SystemExit) as exit_info:
        main(["frobnicate"])
    assert exit_info.value.code == 2
