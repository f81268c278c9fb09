"""Click options made from declared parameters (``pipeline.declare``): the option's type
checks the value exactly as params.yaml's check does, its default is params.yaml's value
(else the class default), and its help is the declaration's, with what it takes and the
paper's value. ``--preset`` replaces the defaults by a named configuration."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import click
from click.core import ParameterSource

from pipeline import params
from pipeline.declare import Spec, plain, specs
from pipeline.distributed import validate_option
from pipeline.errors import PipelineError


class DeclaredType(click.ParamType):
    """A declared parameter's value on the command line (``Spec.parse``)."""

    def __init__(self, name: str, spec: Spec) -> None:
        self.key, self.spec = name, spec
        self.name = spec.kind

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.spec.parse(value, self.key)
        except PipelineError as error:
            self.fail(error.message, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        if self.spec.choices and self.spec.kind == "str":
            return "[" + "|".join(map(str, (*self.spec.choices, *self.spec.words))) + "]"
        return {"int": "INTEGER", "float": "NUMBER", "str": "TEXT", "bool": "true|false", "seeds": "N|S,S,..."}.get(
            self.spec.kind, "A,B,...")


def option_names(name: str, spec: Spec) -> tuple[str, ...]:
    """The option's names: the declaration's (several: aliases kept for old command lines), else
    --<name with dashes>."""
    return tuple(spec.option.split()) if spec.option else (f"--{name.replace('_', '-')}",)


def option_text(spec: Spec, value: Any) -> str:
    """``value`` as the command line writes it, read back the same by ``Spec.parse``: checked
    seeds (always a list) as their count N when they are 0..N-1, and one seed S as "S," (a
    bare "S" is a count)."""
    if spec.kind == "seeds" and isinstance(value, (list, tuple)):
        if tuple(value) == tuple(range(len(value))):
            return str(len(value))
        return plain(value) + ("," if len(value) == 1 else "")
    return plain(value)


def declared_options(section: str, *classes: type, skip: tuple[str, ...] = ()) -> Callable[[Callable], Callable]:
    """An option for every parameter the classes declare (those read from params.yaml), with
    ``params.yaml[section]``'s value as its default."""
    def decorate(command: Callable) -> Callable:
        for cls in reversed(classes):
            defaults = {f: getattr(cls, f, None) for f in specs(cls)}
            for name, spec in reversed(list(specs(cls).items())):
                if not spec.config or name in skip:
                    continue
                value = params.default(section, name, defaults[name])
                command = click.option(*option_names(name, spec), name, type=DeclaredType(name, spec),
                                       default=option_text(spec, value), show_default=True,
                                       help=spec.option_help())(command)
        return command
    return decorate


def preset_option(presets: Mapping[str, Mapping[str, Any]]) -> Callable[[Callable], Callable]:
    """--preset NAME: a named configuration (the paper's, the authors' code) for every option
    not given on the command line."""
    if not presets:
        return lambda command: command
    lines = "; ".join(f"{name}: {preset.get('about', '')}" for name, preset in presets.items())
    return click.option("--preset", type=click.Choice(list(presets)), default=None,
                        help=f"Start from a named configuration instead of params.yaml's defaults (options given "
                             f"still win). {lines}")


def apply_preset(ctx: click.Context, values: dict, presets: Mapping[str, Mapping[str, Any]],
                 preset: str | None) -> dict:
    """``values`` with the preset's settings wherever the option was not given."""
    if preset is None:
        return values
    chosen = {k: v for k, v in presets[preset].items() if k != "about"}
    out = dict(values)
    for key, value in chosen.items():
        if ctx.get_parameter_source(key) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
            out[key] = value
    return out


def scheduler_option(command: Callable) -> Callable:
    """The ``--scheduler`` option, identical on every head stage: params.yaml's top-level
    ``scheduler`` (``pipeline.params.TopLevel``), its value checked at parse time.

    A plain click option of the declaration rather than a generated one, for its callback:
    the declaration takes any text, and ``parse_scheduler`` is what knows the forms."""
    spec = specs(params.TopLevel)["scheduler"]
    return click.option(*option_names("scheduler", spec), "scheduler", type=DeclaredType("scheduler", spec),
                        default=option_text(spec, params.default("", "scheduler", params.TopLevel.scheduler)),
                        show_default=True,
                        metavar="[local:N|HOST:PORT|FILE.json]", callback=validate_option,
                        help=spec.option_help())(command)
