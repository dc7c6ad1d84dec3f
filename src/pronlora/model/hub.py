"""Download the native-format snapshot from the Hub (for clusters with internet access)."""

from __future__ import annotations

import logging
from pathlib import Path

from pronlora.core.errors import EnvironmentProblem
from pronlora.model.snapshot import HUB_REPO, NATIVE_REVISION

log = logging.getLogger(__name__)


def download_snapshot(out: Path, repo: str = HUB_REPO, revision: str = NATIVE_REVISION) -> Path:
    """Fetch ``repo@revision`` into ``out``; a rerun resumes and skips finished files.

    ``refs/pr/70`` is the native transformers conversion of Phi-4-multimodal; the main branch
    is remote code, which this project refuses.
    """
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as exc:
        raise EnvironmentProblem("huggingface_hub is not installed") from exc
    log.info("downloading %s@%s into %s (rerun to resume)", repo, revision, out)
    try:
        path = snapshot_download(repo_id=repo, revision=revision, local_dir=str(out))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as exc:
        raise EnvironmentProblem(
            f"download of {repo}@{revision} into {out} failed: {exc}. On a node without "
            "internet, download on a login node and point --model at the folder."
        ) from exc
    return Path(path)
