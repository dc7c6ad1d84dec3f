"""Where torch.compile keeps what it compiled: one cache for a grid's jobs and nodes."""

from __future__ import annotations

import logging
import os

from pronlora.core.layout import compile_cache

log = logging.getLogger(__name__)


def use_shared_compile_cache() -> None:
    """Inductor's cache under ``$PRONLORA_CACHE`` (shared by a grid's jobs and nodes) unless
    the user chose one. Inductor writes its per-machine default into the variable once anything
    asks for it, and reads the variable at every lookup, so its own default is replaced too."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if chosen is None or os.path.abspath(chosen) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache())
    log.info("torch.compile cache: %s", os.environ["TORCHINDUCTOR_CACHE_DIR"])
