"""Shared plumbing for the ``jobs/`` entry points: logging and turning known errors into exits."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from pronlora.core.errors import InputError

# Errors whose message already names the file, utterance or key at fault: print it, exit 2,
# no traceback. Anything else is a bug and keeps its traceback.
EXIT_INPUT_ERROR = 2


# Third-party lines that bury the project's own and ask nothing of a user: bitsandbytes' CPU
# kernel advice, transformers' rope-config advice for model authors (the real config carries
# original_max_position_embeddings), DeepSpeed's "accelerator is CPU" notice. Errors still show.
QUIET_LOGGERS = ("bitsandbytes", "transformers.modeling_rope_utils")


class _DropMessages(logging.Filter):
    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


def quiet_third_party() -> None:
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


# at import: the entry points import the stages (and through them bitsandbytes, which logs
# its advice while being imported) before run_job sets up logging
quiet_third_party()


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    quiet_third_party()
    logging.getLogger("DeepSpeed").addFilter(_DropMessages("Setting accelerator to CPU"))
    # no progress bars (weight loading, downloads): carriage returns in batch logs. Through the
    # variable huggingface_hub reads when first imported, for transformers too; importing
    # transformers here would cost every job a second before it could report a bad argument.
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    hf_logging = sys.modules.get("transformers.utils.logging")
    if hf_logging is not None:  # imported already: its switch was read
        hf_logging.disable_progress_bar()


def storage_full_message(exc: OSError) -> str | None:
    """A full disk or quota as a one-line error naming the file and the space left."""
    if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    where = Path(exc.filename) if exc.filename else None
    free = ""
    probe = where
    while probe is not None and not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe is not None:
        free = f"; {shutil.disk_usage(probe).free / 2**30:.2f} GiB free on its file system"
    what = "no space left" if exc.errno == errno.ENOSPC else "disk quota exceeded"
    target = f" writing {where}" if where else ""
    return (
        f"{what}{target}{free}. Finished work is kept (atomic writes); free space and rerun "
        "the same command to resume"
    )


def run_job(main: Callable[[], int | None], known: tuple[type[BaseException], ...] = ()) -> None:
    """Run ``main``; an InputError (or one of ``known``) prints its message and exits 2, as does
    a full disk or quota (named, with the space left)."""
    setup_logging()
    try:
        code = main()
    except (InputError, *known) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)
    except OSError as exc:
        message = storage_full_message(exc)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(EXIT_INPUT_ERROR)
    sys.exit(code or 0)
