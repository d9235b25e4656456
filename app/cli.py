"""`lethe` command line: serve the gateway, evaluate a running one."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import TYPE_CHECKING

from app.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI


def _serve(args: argparse.Namespace) -> int:
    # NOTE: numpy's OpenBLAS threads spin after every call and take the cores torch needs for
    # the detector's embedder and the model; the gateway's numpy work is small matrices. One
    # thread cut the detector's one-window p99 from ~34 ms to ~20 ms on 2 cores
    # (bench/registry.py scale). It must be set before numpy loads, hence here.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import uvicorn

    from app.logging_setup import configure_logging

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_format, settings.log_level)
    if args.workers > 1 and not settings.resolved_registry_url().startswith(
        ("redis://", "rediss://", "unix://")
    ):
        sys.stderr.write(
            "lethe serve: --workers > 1 needs a shared registry (LETHE_REGISTRY_URL=redis://...):"
            " with SQLite each worker would enforce only the targets registered through it\n"
        )
        return 2
    if args.workers > 1:
        # Each worker process builds its own app (settings from the environment) and follows
        # the shared registry; uvicorn needs an import string to start them.
        app: str | FastAPI = "app.main:create_app"
    else:
        from app.main import create_app

        app = create_app(settings)
    # log_config=None: uvicorn's own loggers propagate to the handler configured above.
    uvicorn.run(
        app,
        factory=args.workers > 1,
        workers=args.workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from app.evaluation import run_eval

    if args.admin_token is None:
        token = Settings().admin_token
        args.admin_token = token.get_secret_value() if token else None
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return run_eval(args)


def build_parser() -> argparse.ArgumentParser:
    """The `lethe` argument parser."""
    from app.evaluation import add_eval_arguments

    parser = argparse.ArgumentParser(prog="lethe", description="Lethe unlearning gateway")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (settings from LETHE_* env vars)")
    serve.add_argument("--host", default=None, help="bind address (LETHE_HOST)")
    serve.add_argument("--port", type=int, default=None, help="bind port (LETHE_PORT)")
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes (each loads the model); more than one needs a Redis registry",
    )
    serve.set_defaults(func=_serve)
    ev = sub.add_parser("eval", help="evaluate a running gateway on a probe file")
    add_eval_arguments(ev)
    ev.set_defaults(func=_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `lethe` command."""
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
