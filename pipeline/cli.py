"""What the commands share on the command line: -q/-v, file-system errors as messages,
--expect, and the labels of a cache. Progress and verbosity are ``pipeline.progress``, devices
``pipeline.devices``, output files ``pipeline.files``; their names are imported here too, as
the commands have always found them."""

from __future__ import annotations

import functools
from typing import Any, Callable

import click

from pipeline.devices import resolve_device  # noqa: F401
from pipeline.errors import PipelineError
from pipeline.files import (check_outputs, os_error_message, output_problem, safe_filename,  # noqa: F401
                            write_json, write_text)
from pipeline.progress import (DEFAULT_PROGRESS_INTERVAL, NORMAL, QUIET, VERBOSE, LineProgress,  # noqa: F401
                               detail, info, is_quiet, is_verbose, progress, progress_interval, progress_mode,
                               set_verbosity, verbosity)

_STATE = "ffad.verbosity"


def _verbosity_callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Both options feed one state kept on the outermost context, so ``-v`` given to a group
    (``python -m pipeline.report -v build``) is not undone by its subcommand's default; the
    level in force before the command is restored when it ends."""
    root = ctx.find_root()
    state = root.meta.get(_STATE)
    if state is None:
        state = root.meta[_STATE] = {"quiet": False, "verbose": 0}
        root.call_on_close(functools.partial(set_verbosity, verbosity()))
    if param.name == "quiet":
        state["quiet"] = state["quiet"] or bool(value)
    else:
        state["verbose"] = max(state["verbose"], int(value or 0))
    if state["quiet"] and state["verbose"]:
        raise click.UsageError("--quiet and --verbose contradict each other; give one of them.", ctx)
    set_verbosity(QUIET if state["quiet"] else state["verbose"])


def verbosity_options(command: Callable) -> Callable:
    """-q/--quiet (no progress output, only the final result lines) and -v/--verbose (also
    the resolved settings and per-epoch lines, on stderr). The options set the level that
    ``progress``, ``info`` and ``detail`` read; they are not passed to the command."""

    command = os_errors_as_messages(command)

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        if kwargs and is_verbose():
            ctx = click.get_current_context(silent=True)
            name = ctx.command_path if ctx is not None else command.__name__
            detail(f"{name} settings: " + ", ".join(f"{key}={value!r}" for key, value in kwargs.items()))
        return command(*args, **kwargs)

    run = click.option("-v", "--verbose", count=True, expose_value=False, is_eager=True,
                       callback=_verbosity_callback,
                       help="More detail on stderr: the resolved settings and, for heads trained by epochs, a "
                            "line per epoch (-vv: the same, for now).")(run)
    return click.option("-q", "--quiet", is_flag=True, expose_value=False, is_eager=True,
                        callback=_verbosity_callback,
                        help="No progress output; print only the final result lines (and errors).")(run)



def os_errors_as_messages(command: Callable) -> Callable:
    """Let a command end on an OSError (a read-only folder, a full disk, a path that is a file)
    with one ``Error:`` paragraph instead of a traceback; what the command checks itself is
    reported before any work, this is the net under everything else."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OSError as error:
            raise PipelineError(os_error_message(error)) from error

    return run



def parse_expectations(items: tuple[str, ...] | list[str]) -> dict:
    """``("backbone.name=resnet50", "preprocessing.image_size=224")`` -> nested dict.

    Values are read as YAML scalars, so numbers compare as numbers.
    """
    import yaml

    expected: dict = {}
    for item in items:
        key, _, value = item.partition("=")
        parts = [part.strip() for part in key.split(".")]
        if "=" not in item or not all(parts):
            raise PipelineError(f"--expect takes KEY=VALUE with a dotted key such as backbone.name=resnet50, got {item!r}.")
        try:
            parsed = yaml.safe_load(value) if value.strip() else ""
        except yaml.YAMLError as error:
            reason = str(error).splitlines()[0]
            raise PipelineError(f"--expect {item!r}: the value is not a YAML scalar ({reason}); quote it, "
                                f"e.g. {key}='{value}'.") from None
        node = expected
        for part in parts[:-1]:
            if not isinstance(node.setdefault(part, {}), dict):
                raise PipelineError(f"--expect {item!r} contradicts another --expect that gives {part} a value.")
            node = node[part]
        if isinstance(node.get(parts[-1]), dict):
            raise PipelineError(f"--expect {item!r} contradicts another --expect that names keys under {key}.")
        node[parts[-1]] = parsed
    return expected


def cache_label(metadata: dict) -> dict:
    """The labels every reported figure carries: dataset, backbone, image size, preprocessing."""
    prep = metadata.get("preprocessing", {})
    dataset = metadata.get("dataset", {})
    name = dataset.get("name")
    if name in ("imagefolder", "anomaly_folder") and dataset.get("folder"):
        name = f"{name}:{dataset['folder']}"
    return {
        "dataset": name,
        "backbone": metadata.get("backbone", {}).get("name"),
        "image_size": prep.get("image_size"),
        "preprocessing": f"{prep.get('resize')}/{prep.get('interpolation')}/{prep.get('normalisation')}",
    }
