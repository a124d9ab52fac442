"""List, download and locate pretrained weights (Meta's SAM2 / SAM2.1 checkpoints).

  cryopick weights list                       what is known and what is in the cache
  cryopick weights download sam2.1-hiera-large
  cryopick weights path sam2.1-hiera-large    print the cached file's path (for --checkpoint)

The cache is $CRYOPICK_CACHE/weights (default ~/.cache/cryopick/weights); --cache overrides it.
Interrupted downloads resume when the command is run again.
"""

from __future__ import annotations

import argparse
import re

from cryopick.cli._args import nonnegative_int
from cryopick.errors import CryopickError
from cryopick.models import download as W
from cryopick.models.sam2.checkpoint import download


def add_args(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    p = sub.add_parser("list", help="show known weights and the cache")
    p.add_argument("--cache", help="weights directory (default: $CRYOPICK_CACHE/weights)")
    p = sub.add_parser("download", help="download a checkpoint into the cache (resumable)")
    p.add_argument("name", help="model name, e.g. sam2.1-hiera-large (see `cryopick weights list`)")
    p.add_argument("--cache", help="weights directory (default: $CRYOPICK_CACHE/weights)")
    p.add_argument("--url", help="download from this mirror instead of Meta's URL")
    p.add_argument("--sha256", type=_sha256, help="expected SHA-256 of the file, 64 hex digits (enforced)")
    p.add_argument("--retries", type=nonnegative_int, default=None,
                   help="resume attempts within one run (default 3)")
    p = sub.add_parser("path", help="print the cached file's path")
    p.add_argument("name")
    p.add_argument("--cache", help="weights directory (default: $CRYOPICK_CACHE/weights)")


def _sha256(text: str) -> str:
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text.strip()):
        raise argparse.ArgumentTypeError(f"expected 64 hexadecimal digits, got {text!r}")
    return text.strip().lower()


def main(args: argparse.Namespace) -> int:
    if args.weights_command == "list":
        print(f"cache: {W.cache_dir(args.cache)}")
        for row in W.list_weights(args.cache):
            if row["present"]:
                state = f"{row['bytes'] / 1e6:8.1f} MB  sha256 {row['sha256'] or '?'}"
            elif row["partial"]:
                state = f"partial ({row['bytes'] / 1e6:.1f} MB; rerun download to resume)"
            else:
                state = "not downloaded"
            print(f"{row['name']:24s} {row['filename']:26s} {state}")
        return 0
    if args.weights_command == "download":
        retries = {} if args.retries is None else {"retries": args.retries}
        path = download(args.name, cache=args.cache, url=args.url, sha256=args.sha256, **retries)
        print(path)
        return 0
    if args.weights_command == "path":
        path = W.weights_path(args.name, args.cache)
        if not path.is_file():
            raise CryopickError(f"{args.name} is not downloaded ({path} missing); run "
                                f"`cryopick weights download {args.name}`")
        print(path)
        return 0
    raise CryopickError(f"unknown action {args.weights_command!r}")
