"""What every entry point shares on the command line (`python -m lie_cam ...`, `python -m lie_cam.train`,
`python -m lie_cam.experiments.zoo`): an error is one line on stderr and exit code 2.

`OneLineParser` is argparse with its errors on one line; `positive_int` / `non_negative_int` are
argparse types; `run_command(work)` calls `work()` and turns the errors a user can cause (bad
arguments, files that cannot be read or written) into that one line.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn

__all__ = ["EXIT_USAGE", "UsageError", "OneLineParser", "one_line", "positive_int", "non_negative_int",
           "run_command"]

EXIT_USAGE = 2


class UsageError(Exception):
    """A command line that cannot run: printed as one line, exit code 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, with every error as one line (no usage block) and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)}\n")


def one_line(message: object) -> str:
    """`message` with its whitespace (newlines included) collapsed, at most 1000 characters."""
    text = " ".join(str(message).split())
    return text if len(text) <= 1000 else text[:997] + "..."


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    return _bounded_int(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _bounded_int(text, 0, "an integer >= 0")


def _bounded_int(text: str, lowest: int, expected: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value


def run_command(work: Callable[[], int | None]) -> int:
    """work()'s exit code (None: 0); a UsageError, ValueError, TypeError, OSError or RuntimeError
    becomes "error: <message>" on one line of stderr and exit code 2; argparse's own exit (--help: 0,
    a bad argument: 2, already printed) is returned as its code."""
    try:
        code = work()
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else EXIT_USAGE)
    except (UsageError, ValueError, TypeError, OSError, RuntimeError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return EXIT_USAGE
    return 0 if code is None else int(code)
