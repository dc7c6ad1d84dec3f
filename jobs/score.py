#!/usr/bin/env python3
"""Score new recordings with a trained checkpoint: APA scores and the MDD transcript, each word's
canonical phones (CMUdict) aligned to the phones heard, mispronounced ones marked.

  python jobs/score.py --run-dir R --checkpoint epoch-3 --audio a.wav --text "WE CALL IT BEAR"
  python jobs/score.py --run-dir R --checkpoint epoch-3 --folder DIR   (NAME.wav + NAME.txt)

Audio must be 16 kHz mono WAV (prep's rules). Prints a table per recording; --json prints the
results as JSON, --out FILE writes them there. Exit 2 names a bad file, word or checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pronlora.core.atomic import write_json
from pronlora.core.cli import run_job
from pronlora.core.config import ConfigError
from pronlora.infer.score import Recording, describe, recordings_in, score_recordings


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run-dir", required=True, type=Path)
    ap.add_argument("--checkpoint", required=True, help="epoch-N (or base)")
    ap.add_argument("--audio", type=Path, help="one recording (with --text)")
    ap.add_argument("--text", help="what the speaker was asked to read")
    ap.add_argument("--folder", type=Path, help="recordings NAME.wav with NAME.txt beside each")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables")
    ap.add_argument("--out", type=Path, help="also write the results to this JSON file")
    args = ap.parse_args()
    if bool(args.folder) == bool(args.audio):
        raise ConfigError("give either --audio with --text, or --folder")
    if args.audio and not args.text:
        raise ConfigError("--audio needs --text (what the recording says)")
    if args.folder:
        recs = recordings_in(args.folder)
    else:
        recs = [Recording(args.audio.stem, args.audio.resolve(), args.text)]
    results = score_recordings(args.run_dir.resolve(), args.checkpoint, recs)
    if args.out:
        write_json(args.out, results)
    print(json.dumps(results, indent=1) if args.json else "\n\n".join(map(describe, results)))
    return 0


if __name__ == "__main__":
    run_job(main)
