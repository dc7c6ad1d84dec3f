#!/usr/bin/env python3
"""Stage 2: fine-tune Phi-4-multimodal with a named config; rerun to resume.

USR1, USR2 or TERM (or --stop-file appearing) makes it finish the step, save a checkpoint and
exit 3: requeue the job. Under torchrun the workers exit 0 instead (torchrun reports any other
status as a failure) and --requeue-marker is the file that says so.
"""

from __future__ import annotations

import argparse

from pronlora.core.cli import run_job
from pronlora.core.config import available, load_config
from pronlora.core.lean_imports import keep_out, unused_packages
from pronlora.train.inputs import check_same_run, check_training_inputs
from pronlora.train.stopping import EXIT_REQUEUE, StopRequest, install_stop_signals


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", required=True, help=f"one of {available()} or a YAML path")
    ap.add_argument("--prepared", required=True, help="output dir of jobs/prep.py")
    ap.add_argument("--model", required=True, help="Phi-4-multimodal snapshot dir")
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--stop-file", help="save a checkpoint and stop when this file appears")
    ap.add_argument("--requeue-marker", help="file written when stopping to be requeued")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides (e.g. epochs=4)")
    args = ap.parse_args()
    # bad inputs exit 2 before torch and transformers are imported (4-10 s)
    cfg = load_config(args.config, args.overrides)
    inputs = check_training_inputs(cfg, args.prepared, args.model)
    check_same_run(args.run_dir, cfg, inputs)
    stop = StopRequest()
    install_stop_signals(stop)
    keep_out(unused_packages(cfg.quantization))
    from pronlora.core.distributed import launched_by_torchrun
    from pronlora.train.recipe import train

    rc = train(
        cfg,
        args.prepared,
        args.model,
        args.run_dir,
        stop=stop,
        stop_file=args.stop_file,
        requeue_marker=args.requeue_marker,
        inputs=inputs,
    )
    if rc == EXIT_REQUEUE and args.requeue_marker and launched_by_torchrun():
        return 0
    return rc


if __name__ == "__main__":
    # the recipe's own errors (non-finite loss, an overlong instance) are InputErrors: exit 2
    run_job(main, (FileNotFoundError,))
