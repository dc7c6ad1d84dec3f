"""Imported first by the GPU jobs: their CUDA context is created while they import the stage.

Creating a process's CUDA context (the driver's start, the GPU's memory mapped into the
process) costs seconds on a node without a persistence daemon, and until now a job paid it
after its imports, when it first asked for the GPU. Importing this module starts a thread that
makes the first allocation on the job's device; the allocation releases the GIL while the
driver works, so the imports of transformers and PEFT and the input checks run meanwhile.

The device is the one the job will use: ``LOCAL_RANK``'s under torchrun (accelerate's choice),
else the first visible GPU (each Slurm task sees only its own). On a machine without a GPU
the thread does nothing. A failure is left to the job's own first use of the GPU, which meets
it again and reports it with its traceback.
"""

from __future__ import annotations

import os
import threading


def job_device_index() -> int:
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def create_context() -> None:
    try:
        import torch

        index = job_device_index()
        if torch.cuda.is_available() and index < torch.cuda.device_count():
            torch.empty(1, device=f"cuda:{index}")
    except Exception:  # the job's own first use meets it again and reports it
        pass


def start() -> threading.Thread:
    thread = threading.Thread(target=create_context, name="early-cuda-context", daemon=True)
    thread.start()
    return thread


THREAD = start()
