"""`lethe` command line: serve the gateway, evaluate a running one."""

from __future__ import annotations

import argparse
import logging
import sys

from app.settings import Settings


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from app.logging_setup import configure_logging
    from app.main import create_app

    overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    # log_config=None: uvicorn's own loggers propagate to the handler configured above.
    uvicorn.run(
        app,
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
