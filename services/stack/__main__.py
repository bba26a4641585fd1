"""python -m services.stack: start embedviz on this machine; Ctrl-C or SIGTERM stops it all."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from types import FrameType

from services.stack.stack import ALL, GROUPS, Stack, StackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m services.stack",
        description="Start embedded PostgreSQL and NATS, the four services and the edge.",
    )
    parser.add_argument(
        "--components",
        default=os.environ.get("EMBEDVIZ_STACK_COMPONENTS", "all"),
        help=f"comma-separated: {', '.join((*GROUPS, *ALL))} (default: all; "
        "env EMBEDVIZ_STACK_COMPONENTS)",
    )
    parser.add_argument("--data-dir", help="default: $EMBEDVIZ_DATA_DIR or ./var")
    parser.add_argument(
        "--free-ports", action="store_true", help="pick free ports instead of the standard ones"
    )
    parser.add_argument(
        "--echo",
        action=argparse.BooleanOptionalAction,
        default=sys.stdout.isatty(),
        help="print the children's logs here too (default: when run in a terminal)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="stack | %(message)s")

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        stack = Stack(
            args.data_dir,
            components=args.components,
            ports="free" if args.free_ports else "default",
            echo=args.echo,
        )
    except ValueError as exc:
        parser.error(str(exc))
    try:
        stack.start()
        if "edge" in stack.components:
            print(f"\nembedviz is up: open {stack.edge_url}", flush=True)
        else:
            print("\nembedviz (partial) is up:", flush=True)
        print(stack.describe(), flush=True)
        print("Ctrl-C stops everything.", flush=True)
        name, code = stack.wait()
        logging.error("%s exited unexpectedly with code %s; stopping everything (log: %s)",
                      name, code, stack.logs_dir / f"{name}.log")
        return 1
    except StackError as exc:
        logging.error("%s", exc)
        return 1
    except KeyboardInterrupt:
        print("\nstopping embedviz…", flush=True)
        return 0
    finally:
        # a second Ctrl-C must not interrupt the orderly stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
