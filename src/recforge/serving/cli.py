"""``recforge-serve``: load a model and serve it over HTTP on uvicorn.

    recforge-serve --model models:/recforge@champion      # or --run-id <id>, or --bundle <run>/model
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from recforge.errors import RecForgeError
from recforge.serving.admin import ADMIN_TOKEN_ENV, admin_token
from recforge.serving.app import ServiceMiddleware, create_app
from recforge.serving.observability import RequestLog
from recforge.serving.registry import add_model_source_args, one_line, source_uri
from recforge.serving.core import ANN_MIN_ITEMS
from recforge.serving.service import Service, load_model

log = logging.getLogger("recforge.serving")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recforge-serve", description="Serve a RecForge model over HTTP.")
    add_model_source_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)")
    parser.add_argument("--admin-token-file", help=f"turn on /admin/reload and /admin/items, guarded by the token in "
                                                   f"this file (or set ${ADMIN_TOKEN_ENV}); off by default: /admin/* "
                                                   f"answers 404")
    parser.add_argument("--log-file", default="logs/serve.jsonl",
                        help="JSON-lines request log (default logs/serve.jsonl; 'none' turns it off)")
    parser.add_argument("--log-max-mb", type=float, default=100.0,
                        help="rotate the request log when it reaches this size (default 100 MB)")
    parser.add_argument("--log-backups", type=int, default=5,
                        help="rotated request logs to keep: <log>.1 (newest) .. <log>.N (default 5)")
    parser.add_argument("--max-body-kb", type=int, default=1024,
                        help="largest request body in KiB; a larger one gets a 413 (default 1024)")
    parser.add_argument("--max-list-items", type=int, default=10_000,
                        help="most ids in allow_items/deny_items; more get a 400 (default 10000)")
    parser.add_argument("--max-history-items", type=int, default=1_000,
                        help="most item ids in a session request's history; more get a 400 (default 1000)")
    parser.add_argument("--poll-seconds", type=float, default=0.0,
                        help="re-resolve a models:/ alias every N seconds and reload when it moves (0: off)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--score-cache-mb", type=float, default=256.0,
                        help="precompute every known user's scores when they fit in this many MB (default 256; "
                             "0: call score_all per request)")
    parser.add_argument("--ann-min-items", type=int, default=ANN_MIN_ITEMS,
                        help=f"rank known users through the bundle's ANN index (python -m recforge.serving.index) when "
                             f"the catalogue has at least this many items (default {ANN_MIN_ITEMS}; 0: always)")
    parser.add_argument("--access-log", action="store_true", help="uvicorn's access log on stdout (slower)")
    return parser


def _check_args(args: argparse.Namespace) -> None:
    if not 0 <= args.port <= 65535:
        raise RecForgeError(f"--port {args.port} must be in 0..65535")
    for flag, value, low, hint in (
            ("--poll-seconds", args.poll_seconds, 0, " (0 turns polling off)"),
            ("--score-cache-mb", args.score_cache_mb, 0, " (0 turns the cache off)"),
            ("--log-backups", args.log_backups, 0, " (0 keeps no rotated log)"),
            ("--log-max-mb", args.log_max_mb, 0.01, ""),
            ("--max-body-kb", args.max_body_kb, 1, ""), ("--max-list-items", args.max_list_items, 1, ""),
            ("--max-history-items", args.max_history_items, 1, ""), ("--ann-min-items", args.ann_min_items, 0, "")):
        if value < low:
            raise RecForgeError(f"{flag} {value} must be >= {low}{hint}")


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        service, token = build_service(args)
    except RecForgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    run(ServiceMiddleware(create_app(service, token), service), args)


def build_service(args: argparse.Namespace) -> tuple[Service, str | None]:
    """The service ``args`` describe, its model loaded and warmed up, and the admin token (None: admin off)."""
    _check_args(args)
    log_path = None if args.log_file.lower() in ("", "none") else Path(args.log_file)
    uri = source_uri(args.model, args.run_id, args.bundle, args.ckpt)
    token = admin_token(args.admin_token_file)
    tracking_uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    model = load_model(uri, tracking_uri, args.score_cache_mb, args.ann_min_items)
    try:
        request_log = RequestLog(log_path, int(args.log_max_mb * 2 ** 20), args.log_backups)
    except OSError as exc:
        raise RecForgeError(f"--log-file {log_path}: {one_line(exc)}; give a writable path or 'none'") from None
    log.info("serving %s (%d users, %d items) on http://%s:%d; request log: %s; admin: %s", model.ref.model_id,
             model.n_users, model.n_items, args.host, args.port, log_path or "off", "on" if token else "off")
    return Service(model, tracking_uri, request_log, args.poll_seconds, args.score_cache_mb, args.max_body_kb << 10,
                   args.max_list_items, args.max_history_items, args.ann_min_items), token


def run(app, args: argparse.Namespace, http=None) -> None:
    """Serve ``app`` on uvicorn at ``args.host:args.port``; ``http``: uvicorn's HTTP protocol (default: h11 with
    one socket write per response, :class:`recforge.serving.transport.CorkedH11Protocol`)."""
    import torch
    import uvicorn

    from recforge.serving.transport import CorkedH11Protocol

    torch.set_num_threads(max(1, args.threads))  # one request is one small row: more threads only contend
    try:
        import faiss  # the ANN index searches one query per request: one OpenMP thread, as torch

        faiss.omp_set_num_threads(max(1, args.threads))
    except ImportError:
        pass
    uvicorn.run(app, host=args.host, port=args.port, http=http or CorkedH11Protocol, access_log=args.access_log,
                log_level="info", timeout_graceful_shutdown=5, server_header=False, proxy_headers=False)


if __name__ == "__main__":
    main()
