"""``python -m avalanche_promptmoe.kit {build,verify,where}``: rebuild, check or locate the offline kit."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from avalanche_promptmoe.kit.build import add_build_arguments, build_kit
from avalanche_promptmoe.kit.files import verify_kit
from avalanche_promptmoe.kit.locate import KitError, default_kit_dir


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    p = argparse.ArgumentParser(prog="python -m avalanche_promptmoe.kit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    add_build_arguments(sub.add_parser("build", help="rebuild the kit from public sources"))
    verify = sub.add_parser("verify", help="check the sha256 of every kit file against its JSON")
    verify.add_argument("kit", nargs="?", default=None)
    sub.add_parser("where", help="print the kit folder the library uses")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.command == "build":
            build_kit(args)
        elif args.command == "verify":
            print(json.dumps(verify_kit(args.kit), indent=1))
        else:
            print(default_kit_dir())
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
