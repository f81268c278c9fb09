"""``ffad``: one installed command for every stage, beside the ``python -m`` forms.

    ffad extract --backbone resnet50        # python -m pipeline.extract
    ffad knn --cache cache/...zarr          # python -m stages.knn
    ffad --version

Each subcommand's module is imported only when that subcommand runs (or shows its help), so
``ffad --help`` loads neither torch nor zarr.
"""

from __future__ import annotations

import importlib

import click

from pipeline.heads.registry import HEADS

# name -> (module:function, one line for ``ffad --help``)
COMMANDS: dict[str, tuple[str, str]] = {
    "extract": ("pipeline.extract.command:main", "Extract frozen backbone features of a dataset into a feature cache."),
    "cache": ("pipeline.store.command:main", "Inspect, verify, repair, export or import a feature cache."),
    **{name: (f"pipeline.commands.{name}:main", f"Train and evaluate the {name} head on a feature cache.")
       for name in HEADS},
    "plume-ablation": ("pipeline.commands.plume_ablation:main", "Several PLUME variants side by side (table 1c)."),
    "score": ("pipeline.scoring:main", "Score new images or features with a saved head."),
    "report": ("pipeline.report.command:main", "Build the results tables and the HTML report from metrics files."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, _, attribute = COMMANDS[name][0].partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except ModuleNotFoundError as error:
            if error.name != module or name not in HEADS:
                raise
            from pipeline.commands.stage import generic_command  # a head with no command of its own

            return generic_command(name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="frozen-feature-ad", prog_name="ffad")
def main() -> None:
    """One-class anomaly detection heads on cached frozen backbone features. Each command is
    also ``python -m <module>`` (see docs/quickstart.md); ``ffad COMMAND --help`` explains it."""


if __name__ == "__main__":
    main()
