"""CLI: the ``lensbias`` command. One module per subcommand; heavy imports inside handlers.

Every user error ends in one line on stderr and exit code 2; internal failures exit 1.
"""

from __future__ import annotations

import inspect
import signal
import sys

import click

from lensbias import __version__
from lensbias.cli.cache import cache
from lensbias.cli.compress import compress
from lensbias.cli.diff import diff, report
from lensbias.cli.export import export
from lensbias.cli.listing import datasets, models
from lensbias.cli.summary import summary
from lensbias.cli.sweep import sweep, sweep_report
from lensbias.errors import LensbiasError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lensbias")
def cli() -> None:
    """Which code and prose concepts survive model compression, and where."""


cli.add_command(cache)
cli.add_command(compress)
cli.add_command(diff)
cli.add_command(export)
cli.add_command(report)
cli.add_command(models)
cli.add_command(datasets)
cli.add_command(summary)
cli.add_command(sweep)
cli.add_command(sweep_report)

EXAMPLES = "\b\nExamples:"


def _examples_last(command: click.Command) -> None:
    """Move a docstring's closing Examples block after the options: --help ends with it."""
    head, found, tail = inspect.cleandoc(command.help or "").partition(EXAMPLES)
    if found and not command.epilog:
        command.help, command.epilog = head.rstrip(), EXAMPLES + tail


for _command in cli.commands.values():
    _examples_last(_command)


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so it unwinds (and cleans up) as on Ctrl-C."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise _Terminated()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the command, turns user errors into one line and exit 2.

    Ctrl-C (exit 130) and SIGTERM (exit 143) unwind the command, so what it was writing is
    cleaned up the same way for both.
    """
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return _run(argv)
    except _Terminated:  # raised after click stopped catching (e.g. while printing)
        click.echo("lensbias: terminated", err=True)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str] | None) -> int:
    try:
        cli.main(args=argv, prog_name="lensbias", standalone_mode=False)
    except LensbiasError as err:
        click.echo(f"lensbias: error: {err}", err=True)
        return 2
    except click.exceptions.Abort as err:
        if isinstance(err.__context__, _Terminated) or isinstance(err.__cause__, _Terminated):
            click.echo("lensbias: terminated", err=True)
            return 143
        click.echo("lensbias: aborted", err=True)
        return 130
    except click.ClickException as err:
        click.echo(f"lensbias: error: {err.format_message()}", err=True)
        return 2
    except click.exceptions.Exit as err:
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
