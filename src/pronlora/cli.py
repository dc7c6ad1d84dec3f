"""Shared plumbing for the ``jobs/`` entry points: logging and turning known errors into exits."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from pronlora.errors import InputError

# Errors whose message already names the file, utterance or key at fault: print it, exit 2,
# no traceback. Anything else is a bug and keeps its traceback.
EXIT_INPUT_ERROR = 2


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
        force=True,
    )


def run_job(
    main: Callable[[], int | None], known: tuple[type[BaseException], ...] = ()
) -> None:
    """Run ``main``; an InputError (or one of ``known``) prints its message and exits 2."""
    setup_logging()
    try:
        code = main()
    except (InputError, *known) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)
    sys.exit(code or 0)
