"""pronlora: LoRA fine-tuned Phi-4-multimodal pronunciation evaluation as Slurm batch jobs."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pronlora")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"
