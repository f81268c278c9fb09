"""Parameters declared once: a dataclass field with its type, range or choices, help text and
the paper's value. Everything else is made from it.

    lam: float = param(5.0, "Weight of the near-identity loss (eq. 1).", low=0, paper=5.0)

- ``Spec.check`` validates a value from params.yaml or Python, strictly: a bool is not an int,
  2.7 is not an int, a YAML list is accepted where a list is meant (``pipeline.params``).
- ``Spec.parse`` reads the same value from a command line (``pipeline.commands.options``).
- ``Spec.report`` is how the report names the setting (the stage runner writes the words into
  the metrics' ``about``, ``setting_words``, so that the report reads words, not head code).

Torch-free and click-free, so that a command's ``--help`` stays fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Iterable, Mapping

from pipeline.errors import PipelineError

class _NotGiven:
    def __repr__(self) -> str:
        return "NOT_GIVEN"


NOT_GIVEN: Any = _NotGiven()  # no paper value declared
KINDS = ("int", "float", "str", "bool", "ints", "floats", "names", "seeds")


@dataclass(frozen=True)
class Spec:
    """How one parameter is given, checked and named. ``kind``: int, float, str, bool, a list
    (ints, floats, names: strings, a class index as well), or seeds (a count N, meaning 0..N-1,
    or a list of seeds; always checked into the list). ``words``: keywords a number may also be (``lr:
    steepest``); ``none_word``: a keyword meaning None (``variance_hinge: none``)."""

    help: str
    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    words: tuple[str, ...] = ()
    none_word: str | None = None
    paper: Any = NOT_GIVEN
    # The report's words for the setting: a format of the value ("lambda = {}"), or, for a choice,
    # the words of each value ({"l2": "L2-normalised features"}; a value left out: nothing).
    report: str | Mapping[Any, str] | None = None
    report_skip: Any = NOT_GIVEN  # a value for which the report says nothing (min_steps 0: no floor)
    option: str | None = None     # the command-line option(s), space-separated, if not --<name with dashes>
    config: bool = True           # read from params.yaml (False: set by the evaluation, such as a seed)

    # -- checking ---------------------------------------------------------------------------

    def check(self, value: Any, name: str, where: str = "") -> Any:
        """``value`` if valid (lists as tuples, ints as floats where a float is meant), else a
        PipelineError naming ``where`` (the file and section), the parameter and what it takes."""
        if value is None and (self.none_word is not None):
            return None
        if isinstance(value, str) and value in self.words:
            return value
        if self.none_word is not None and value == self.none_word:
            return None
        if self.kind == "seeds":
            if isinstance(value, int) and not isinstance(value, bool):
                if value < 1:
                    self._refuse(value, name, where)
                return tuple(range(value))
            return Spec(self.help, "ints", low=0).check(value, name, where) or self._refuse(value, name, where)
        if self.kind in ("names", "ints", "floats") and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = (value,)  # one class index, one severity, one gamma
        if self.kind in ("ints", "floats", "names"):
            if isinstance(value, str):
                convert = {"ints": int, "floats": float}.get(self.kind, str)
                value = [_convert(part.strip(), convert) for part in value.split(",") if part.strip()]
            if not isinstance(value, (list, tuple)):
                self._refuse(value, name, where)
            element = Spec(self.help, {"ints": "int", "floats": "float", "names": "str"}[self.kind],
                           self.low, self.high, self.low_open, self.high_open, self.choices)
            if self.kind == "names":
                value = [str(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
            return tuple(element.check(v, name, where) for v in value)
        if self.kind == "bool":
            if not isinstance(value, bool):
                self._refuse(value, name, where)
            return value
        if self.kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                self._refuse(value, name, where)
        elif self.kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                self._refuse(value, name, where)
            value = float(value)
        elif self.kind == "str":
            if not isinstance(value, str):
                self._refuse(value, name, where)
        if self.choices and value not in self.choices:
            self._refuse(value, name, where)
        if not self._in_range(value):
            self._refuse(value, name, where)
        return value

    def _in_range(self, value: Any) -> bool:
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def _refuse(self, value: Any, name: str, where: str) -> None:
        given = f"{value!r} ({type(value).__name__})" if not isinstance(value, str) else repr(value)
        place = f"{where}: " if where else ""
        raise PipelineError(f"{place}{name} must be {self.expected()}, not {given}.")

    def expected(self) -> str:
        """What the parameter takes, in words (errors and ``--help``)."""
        if self.kind == "seeds":
            what = "a number of seeds N >= 1 (seeds 0..N-1) or a list of seeds"
        elif self.kind in ("ints", "floats", "names"):
            one = {"ints": "integers", "floats": "numbers", "names": "names"}[self.kind]
            what = f"a list of {one} (a YAML list, or comma-separated)"
            if self.choices:
                what += f" among {', '.join(map(str, self.choices))}"
        elif self.choices:
            what = "one of " + ", ".join(map(str, self.choices))
        else:
            what = {"int": "an integer", "float": "a number", "str": "a text", "bool": "true or false"}[self.kind]
            bounds = self.range_words()
            if bounds:
                what += f" {bounds}"
        alternatives = [*self.words, *([self.none_word] if self.none_word else [])]
        return what + (f", or {' or '.join(alternatives)}" if alternatives else "")

    def range_words(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {_number(self.low)}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {_number(self.high)}")
        return " and ".join(parts)

    # -- the command line -------------------------------------------------------------------

    def parse(self, text: Any, name: str) -> Any:
        """A command-line value (text) as ``check`` takes it: "3" -> 3 for an int, "a,b" a list."""
        if not isinstance(text, str):
            return self.check(text, name)
        stripped = text.strip()
        value: Any = stripped
        if stripped.lower() in (w.lower() for w in self.words):
            value = stripped.lower()
        elif self.none_word is not None and stripped.lower() == self.none_word:
            return None
        elif self.kind == "int":
            value = _convert(stripped, int)
        elif self.kind == "float":
            value = _convert(stripped, float)
        elif self.kind == "bool":
            value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
                stripped.lower(), stripped)
        elif self.kind in ("ints", "floats", "seeds"):
            convert = float if self.kind == "floats" else int
            parts = [_convert(part.strip(), convert) for part in stripped.split(",") if part.strip()]
            value = parts[0] if self.kind == "seeds" and "," not in stripped and parts else tuple(parts)
        return self.check(value, name)

    def option_help(self) -> str:
        paper = "" if self.paper is NOT_GIVEN else f" Paper: {plain(self.paper)}."
        return f"{self.help}{paper} [{self.expected()}]"


def _convert(text: str, convert: type) -> Any:
    try:
        return convert(text)
    except ValueError:
        return text  # check() refuses it with the parameter's name


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def plain(value: Any) -> str:
    """A value as params.yaml and the command line write it."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return "none" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def param(default: Any, help: str, *, kind: str | None = None, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False, choices: Iterable = (), words: Iterable[str] = (),
          none_word: str | None = None, paper: Any = NOT_GIVEN, report: str | Mapping[Any, str] | None = None,
          report_skip: Any = NOT_GIVEN, option: str | None = None, config: bool = True) -> Any:
    """A dataclass field that declares a parameter (see the module's docstring). ``kind`` is
    taken from the default when left out (bool, int, float, str; a tuple of them: a list)."""
    kind = kind or _kind_of(default)
    if kind not in KINDS:
        raise ValueError(f"unknown parameter kind {kind!r}")
    spec = Spec(help, kind, low, high, low_open, high_open, tuple(choices), tuple(words), none_word, paper, report,
                report_skip, option, config)
    if default is not None or none_word is None:
        spec.check(default, "default")  # a declaration that contradicts itself fails at import
    return field(default=default, metadata={"spec": spec})


def _kind_of(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, tuple):
        return {int: "ints", float: "floats"}.get(type(default[0]), "names") if default else "names"
    return "str"


def specs(cls: type) -> dict[str, Spec]:
    """The declared parameters of a dataclass, in field order: name -> Spec."""
    return {f.name: f.metadata["spec"] for f in fields(cls) if "spec" in f.metadata}


def defaults(cls: type) -> dict[str, Any]:
    """The declared parameters' defaults: name -> value."""
    return {f.name: f.default for f in fields(cls) if "spec" in f.metadata}


def check_all(obj: Any, where: str) -> None:
    """Check every declared parameter of a dataclass instance (``Head._check_params``)."""
    for name, spec in specs(type(obj)).items():
        spec.check(getattr(obj, name), name, where)


def setting_words(cls: type, values: dict) -> dict[str, str]:
    """The report's words for the settings that declare them: name -> words."""
    words = {}
    for name, spec in specs(cls).items():
        if spec.report is None or name not in values or values[name] == spec.report_skip:
            continue
        if isinstance(spec.report, Mapping):
            if values[name] in spec.report:
                words[name] = spec.report[values[name]]
        else:
            words[name] = spec.report.format(plain(values[name]))
    return words
