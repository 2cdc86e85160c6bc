"""Shared CLI plumbing: one-line errors, ``--verbose`` tracebacks, plugin discovery.

Every omama command raises :class:`runtime.errors.OmamaError` for problems a user can fix;
:func:`run_app` turns it into ``error: <message>`` on stderr and exit status 1. With
``--verbose`` (anywhere on the command line) the traceback is printed as well; a message of
many lines (PyTorch's loaders raise those) is cut to its first line unless ``--verbose``.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Callable
from importlib.metadata import entry_points

import typer

try:  # typer >= 0.20 vendors click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer uses click itself
    from click import exceptions as click_exceptions

from runtime.errors import OmamaError

ENTRY_POINT_GROUP = "omama.commands"


def new_app(help_text: str) -> typer.Typer:
    """A typer app with the project's conventions (no rich tracebacks, -h for help)."""
    app = typer.Typer(
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
        rich_markup_mode=None,
    )

    @app.callback()
    def _group() -> None:
        # A callback keeps the app a command group even while it has a single command.
        pass

    _group.__doc__ = help_text
    return app


def discover_commands(app: typer.Typer, group: str = ENTRY_POINT_GROUP) -> None:
    """Let every installed layer add its commands to ``app`` (entry-point group ``group``).

    Each entry point is a callable ``register(app)``. Modules behind them must stay light
    at import time (no torch), so that ``omama --help`` is fast.
    """
    for ep in sorted(entry_points(group=group), key=lambda e: e.name):
        register: Callable[[typer.Typer], None] = ep.load()
        register(app)


def one_line(message: str, verbose: bool) -> str:
    """``message`` as one line: its first non-empty line, and how many more there are.

    Libraries (PyTorch's loaders above all) raise messages of many lines; a refusal stays one
    line on stderr and the rest is shown with ``--verbose``.
    """
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if verbose or len(lines) <= 1:
        return message.strip() if verbose else (lines[0] if lines else "")
    more = len(lines) - 1
    return f"{lines[0]} ({more} more line{'s' if more > 1 else ''}: run again with --verbose)"


def run_app(app: typer.Typer, argv: list[str] | None = None, prog_name: str = "omama") -> int:
    """Run ``app`` and map failures to one clear line and a non-zero exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    for flag in ("--verbose", "-v"):
        while flag in args:
            args.remove(flag)
            verbose = True
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
    )
    try:
        result = app(args=args, prog_name=prog_name, standalone_mode=False)
    except typer.Abort:
        print("error: interrupted", file=sys.stderr)
        return 130
    except click_exceptions.ClickException as exc:  # usage errors: click formats them itself
        exc.show()
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except OmamaError as exc:
        if verbose:
            traceback.print_exc()
        print(f"error: {one_line(str(exc), verbose)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: still one line, traceback with --verbose
        if verbose:
            traceback.print_exc()
            print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        else:
            first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
            print(
                f"error: {type(exc).__name__}: {first} "
                "(run again with --verbose for the traceback)",
                file=sys.stderr,
            )
        return 1
    return result if isinstance(result, int) else 0
