"""What the sweep tests check alike: a refused spec."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from hil.cli import cli


def assert_spec_refused(spec: Path, out: Path, says: str) -> None:
    """``hil sweep SPEC`` ends with one ``error:`` line containing ``says``, no traceback, nothing written."""
    result = CliRunner().invoke(cli, ["sweep", str(spec), "--out", str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], result.output
    assert "Traceback" not in result.output
    assert not out.exists()
