"""How the command line reads options: one flag per config field, one-line errors, quiet start-up.

Every config option is a flag named after its field (``--image-size``, ``--rotation-range``,
``--learning-rate``...) with the help text, choices and default of :mod:`tlkit.config`. Precedence:
defaults < ``--config FILE`` < flags given on the command line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from typing import Any

import click

from tlkit import config as cfg
from tlkit.cli.checks import quiet_matplotlib_config, stdout_is_closed, unexpected
from tlkit.errors import OptionError, TlkitError

log = logging.getLogger("tlkit")


class OneLineUsageError(click.ClickException):
    """A bad option or argument, said in one line (click's usage text would add several); exit code 2."""

    exit_code = 2


class TlkitGroup(click.Group):
    """A click group whose errors are one ``Error:`` line: exit code 1 for tlkit's, 2 for bad usage, 1 for
    anything unexpected (its traceback in a log file; ``--debug`` prints it)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        """Refuse to run with standard output closed: every command answers there."""
        if stdout_is_closed():
            sys.stderr.write("Error: standard output is closed; tlkit has nowhere to write its answer\n")
            sys.exit(1)
        return super().main(*args, **kwargs)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            quiet_matplotlib_config()
            return super().invoke(ctx)
        except click.UsageError as exc:
            where = f" (see {exc.ctx.command_path} -h)" if exc.ctx is not None else ""
            raise OneLineUsageError(" ".join(exc.format_message().split()) + where) from None
        except OptionError as exc:  # options that cannot go together: bad usage too
            where = f" (see {ctx.command_path} {ctx.invoked_subcommand} -h)" if ctx.invoked_subcommand else ""
            raise OneLineUsageError(" ".join(str(exc).split()) + where) from None
        except TlkitError as exc:
            raise click.ClickException(" ".join(str(exc).split())) from None  # one line, whatever it quotes
        except BrokenPipeError:  # the reader left (`tlkit predict DIR | head`): stop quietly, as Unix tools do
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
            raise click.exceptions.Exit(1) from None
        except OSError as exc:
            raise click.ClickException(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # the last resort: one line, never a traceback unless asked for
            raise click.ClickException(unexpected(exc, ctx.meta.get(DEBUG_KEY, False))) from None


def _field_default(field: dataclasses.Field):
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default


def config_options(names: tuple[str, ...] | None = None):
    """Decorator adding one flag per config field (all, or those in ``names``), with the help text and
    choices of the field's metadata; unset flags stay ``None``."""

    def decorate(command):
        for section in reversed(list(cfg.SECTIONS.values())):
            for field in reversed(dataclasses.fields(section)):
                if names is not None and field.name not in names:
                    continue
                flag = field.name.replace("_", "-")
                choices = field.metadata["choices"]
                if field.type == "bool":
                    decls, kind = [f"--{flag}/--no-{flag}"], None
                else:
                    decls = [f"--{flag}"]
                    kind = click.Choice(choices) if choices else {"int": int, "float": float}.get(field.type, str)
                bounds = field.metadata["bounds"]
                shown = f"default: {_field_default(field)}" + (f"; {bounds.interval()}" if bounds else "")
                command = click.option(*decls, field.name, type=kind, default=None,
                                       help=f"{field.metadata['help']}  [{shown}]")(command)
        return command

    return decorate


def given_options(options: dict) -> dict[str, dict]:
    """The flags that were given, by config section."""
    sections: dict[str, dict] = {}
    for name, section in cfg.SECTIONS.items():
        given = {f.name: options[f.name] for f in dataclasses.fields(section) if options.get(f.name) is not None}
        if given:
            sections[name] = given
    return sections


def build_config(config_file: str | None, options: dict) -> cfg.Config:
    """Defaults, then the config file, then the flags that were given."""
    base = cfg.load_config(config_file) if config_file else cfg.Config()
    return base.replace(**given_options(options))


def start(quiet: bool, framework: bool = True) -> None:
    """Before a command's work: tlkit's log lines to stderr, and the ML framework loaded quietly (unless
    ``framework`` is False: the library then loads it, as quietly, only if the work needs it)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if quiet else logging.INFO)
    log.propagate = False
    if framework:
        from tlkit.backends import load_quietly

        load_quietly()


def progress_to_stderr() -> contextlib.AbstractContextManager:
    """While a command works: Keras's progress bars, which it prints to stdout, go to stderr with tlkit's
    log lines, so that stdout holds only the command's results (``tlkit evaluate > eval.txt``)."""
    return contextlib.redirect_stdout(sys.stderr)


#: Where ``--debug`` is noted for the group's error handler.
DEBUG_KEY = "tlkit.debug"
debug_option = click.option("--debug", is_flag=True, expose_value=False, is_eager=True,
                            callback=lambda ctx, param, value: ctx.meta.__setitem__(DEBUG_KEY, value),
                            help="Print the traceback of an unexpected error (also TLKIT_DEBUG=1).")
config_file_option = click.option("--config", "config_file", type=click.Path(dir_okay=False),
                                  help="JSON or TOML file of options (a run's config.json reproduces it).")
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress output.")
run_option = click.option("--run", "run_dir", type=click.Path(), help="Run folder [default: the latest under runs/].")
labels_option = click.option("--labels", type=click.Path(dir_okay=False),
                             help="CSV of labels for the images of the data folder [default: the run's own, on its "
                                  "own data].")
tta_option = click.option("--tta", type=click.IntRange(min=1), default=1, show_default=True,
                          help="Average the probabilities of this many views of each image: itself, mirrored, "
                               "then shifted (up to 18; 1: the image alone).")
