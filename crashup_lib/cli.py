"""The `crashup` command. Subcommands grow with the project; each is a thin shell over the library."""
from __future__ import annotations

import argparse
import sys

from crashup_lib import __version__, config


def _config(args) -> int:
    try:
        cfg = config.load(args.file)
    except config.ConfigError as e:
        print(f"crashup: {e}", file=sys.stderr)
        return 2
    if args.what == "check":
        print(f"crashup: configuration OK ({args.file or config.DEFAULT_PATH})")
    else:
        width = max(len(name) for name in cfg)
        for name in cfg:
            value = cfg[name]
            shown = " ".join(value) if isinstance(value, tuple) else value
            print(f"{name:<{width}}  {shown!s:<30}  {cfg.sources[name]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="crashup", description="OpenStack compute HA and recovery for Pacemaker")
    parser.add_argument("--version", action="version", version=f"crashup {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("config", help="check or show the configuration, or print a commented sample")
    p.add_argument("what", choices=("check", "show", "sample"))
    p.add_argument("--file", help=f"configuration file (default: $CRASHUP_CONFIG or {config.DEFAULT_PATH})")
    args = parser.parse_args(argv)
    if args.command == "config":
        if args.what == "sample":
            print(config.sample())
            return 0
        return _config(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
