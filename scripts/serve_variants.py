"""``recforge-serve`` with the variants docs/serving.md measured and dropped, to measure them again with
``scripts/load_test.py``: ``/recommend`` answered in a thread pool instead of the event loop, and uvicorn's plain
h11 protocol instead of one socket write per response.

    python scripts/serve_variants.py --bundle logs/runs/<time>/model --compute threads --http h11 --port 8001

Every other flag is ``recforge-serve``'s.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import recforge  # noqa: F401  (fails early, with the install hint, outside the project's environment)
from recforge.errors import RecForgeError
from recforge.serving.answers import answer_recommend
from recforge.serving.app import ServiceMiddleware, create_app
from recforge.serving.cli import build_parser, build_service, run


class ThreadPoolMiddleware(ServiceMiddleware):
    """``POST /recommend`` answered in a worker thread (measured slower: the hop costs more than the work)."""

    async def recommend(self, body: bytes, info: dict[str, Any]) -> tuple[int, bytes]:
        return await asyncio.to_thread(answer_recommend, self.service, body, info)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    parser.add_argument("--compute", choices=("loop", "threads"), default="loop",
                        help="answer /recommend in the event loop (recforge-serve's way) or in a thread pool")
    parser.add_argument("--http", choices=("corked", "h11"), default="corked",
                        help="one socket write per response (recforge-serve's way) or uvicorn's h11 as is")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        service, token = build_service(args)
    except RecForgeError as exc:
        sys.exit(f"error: {exc}")
    middleware = ThreadPoolMiddleware if args.compute == "threads" else ServiceMiddleware
    run(middleware(create_app(service, token), service), args, http="h11" if args.http == "h11" else None)


if __name__ == "__main__":
    main()
