"""Errors meant for the person at the keyboard, not for a debugger."""

from __future__ import annotations

import textwrap

import click


class PipelineError(click.ClickException):
    """A problem with the user's input or environment.

    Click prints it as ``Error: <message>`` with no traceback and exits with status 1,
    so library code can raise it and every command gets the same behaviour.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(textwrap.dedent(message).split()))


def choice_error(kind: str, name: str, valid: list[str] | tuple[str, ...]) -> PipelineError:
    """The error for an unknown name, listing the valid ones."""
    return PipelineError(f"unknown {kind} {name!r}; choose one of: {', '.join(valid)}.")
