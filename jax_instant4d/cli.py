"""The ``instant4d`` command: parses arguments and calls into the library (no logic here).

Subcommands are listed in ``_REGISTRY``: name -> (help, add_arguments(parser), run(args, overrides)).
"""

from __future__ import annotations

import argparse
import sys

# (subcommand name, module, attribute): each attribute is (help, add_arguments(parser), run(args, overrides)).
_REGISTRY = [
    ("data", "jax_instant4d.data.cli", "COMMAND"),
    ("train", "jax_instant4d.train.cli", "COMMAND"),
    ("eval", "jax_instant4d.eval.cli", "COMMAND"),
    ("curves", "jax_instant4d.eval.curves", "COMMAND"),
    ("animate", "jax_instant4d.animate", "COMMAND"),
    ("export", "jax_instant4d.export.cli", "COMMAND"),
    ("sweep", "instant4d_launch.sweep_cli", "COMMAND"),
    ("bench", "jax_instant4d.bench", "COMMAND"),
]


LAUNCH_PACKAGE = "instant4d_launch"  # the launchers: launch/ in a checkout, installed under this name


def import_launcher(module: str):
    """``instant4d_launch.X``: from the checkout this package sits in when it is one (``launch/`` beside
    ``jax_instant4d/``, so a checkout on PYTHONPATH uses its own launchers), else the installed package."""
    import importlib
    import importlib.util
    from pathlib import Path

    if LAUNCH_PACKAGE not in sys.modules:
        root = Path(__file__).resolve().parents[1]
        init = root / "launch" / "__init__.py"
        if (root / "setup.py").is_file() and init.is_file():
            spec = importlib.util.spec_from_file_location(LAUNCH_PACKAGE, init,
                                                          submodule_search_locations=[str(init.parent)])
            package = importlib.util.module_from_spec(spec)
            sys.modules[LAUNCH_PACKAGE] = package
            try:
                spec.loader.exec_module(package)
            except BaseException:
                del sys.modules[LAUNCH_PACKAGE]
                raise
    return importlib.import_module(module)


def _commands():
    """Subcommands whose modules exist in this checkout (a module that fails to import is an error)."""
    import importlib

    cmds = {}
    for name, module, attr in _REGISTRY:
        try:
            if module.startswith(LAUNCH_PACKAGE + "."):
                mod = import_launcher(module)
            else:
                mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:
                continue
            raise
        cmds[name] = getattr(mod, attr)
    return cmds


def setup_logging() -> None:
    """The log messages of the package and of its launchers (``logging.getLogger("jax_instant4d...")``,
    ``"instant4d_launch..."``; INFO and above) go to stderr, one line each. Called once by :func:`main`
    (every subcommand); calling it again changes nothing."""
    import logging

    class _Stderr(logging.StreamHandler):
        """Writes to ``sys.stderr`` as it is when a message comes (main() may run more than once in a
        process whose stderr is replaced in between, e.g. under pytest's capsys)."""

        @property
        def stream(self):
            return sys.stderr

        @stream.setter
        def stream(self, _value) -> None:
            pass

    for name in ("jax_instant4d", LAUNCH_PACKAGE):
        logger = logging.getLogger(name)
        if not logger.handlers:
            handler = _Stderr()
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)
            logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    from jax_instant4d.config import ConfigError, split_config_args

    setup_logging()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, overrides = split_config_args(argv)
    except ConfigError as e:
        print(f"instant4d: error: {e}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="instant4d", description="Instant expressive Gaussian head avatars.",
                                     epilog="Any config key can be overridden as --config.section.key=value.")
    sub = parser.add_subparsers(dest="command", required=True)
    commands = _commands()
    for name, (help_text, add_args, _run) in commands.items():
        add_args(sub.add_parser(name, help=help_text))
    args = parser.parse_args(argv)
    _help, _add, run = commands[args.command]
    try:
        return int(run(args, overrides) or 0)
    except ConfigError as e:
        print(f"instant4d: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"instant4d {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
