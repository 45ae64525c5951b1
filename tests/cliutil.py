"""Running `llamapy` in the test process, for the command-line tests."""
from __future__ import annotations

from llamapy.cli import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run `llamapy ARGS` in this process; (exit status, stdout, stderr)."""
    code = 0
    try:
        main(list(args))
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err
