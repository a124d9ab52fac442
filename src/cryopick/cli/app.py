"""Annotate, train, pick and review in a browser tab (a local web server for a project folder).

An empty or new folder becomes a project; a folder of micrographs (or with a micrographs/ subfolder)
is opened in place. Annotations are RELION per-micrograph STAR files under PROJECT/annotations/.
Listens on 127.0.0.1 by default; with another --host the printed URL carries the required access
token. On a remote workstation, tunnel the port: ssh -L 8765:localhost:8765 workstation.

Examples:
  cryopick app my_project/
  cryopick app /data/relion_project --port 9000 --no-browser
"""

from __future__ import annotations

import argparse

from cryopick.cli._args import nonnegative_int


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project_dir", help="project folder (created when missing)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default 127.0.0.1; any other needs the token in the URL)")
    parser.add_argument("--port", type=nonnegative_int, default=8765, help="port (default 8765; 0 = any free port)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser")


def main(args: argparse.Namespace) -> int:
    from cryopick.app import serve

    serve(args.project_dir, host=args.host, port=args.port, open_browser=not args.no_browser)
    return 0
