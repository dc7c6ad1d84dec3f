#!/usr/bin/env python3
"""Does the image's package set resolve? pip's resolver for the image's Python (CPython 3.12,
manylinux x86_64), with containers/torch-pin.txt and containers/requirements.lock, before a lab
spends two hours building it (CI runs this; it needs the package index, not a GPU).

torch's own CUDA runtime packages (cuda-toolkit, nvidia-*, triton, cuda-bindings) are pinned
exactly by torch and named by nothing in the lock, so they cannot conflict with it: the check
reads torch's real metadata from the index and resolves against a stand-in wheel that carries
the rest of its requirements. deepspeed is an sdist (built in the image), so its stand-in
carries the requirements of the release the lock pins, read from this environment's build.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Ubuntu 24.04's glibc 2.39 takes any manylinux wheel up to 2.39; pip wants each tag named
PLATFORM = ["--python-version", "3.12"] + [
    f"--platform=manylinux_2_{minor}_x86_64" for minor in (39, 35, 34, 31, 28, 27, 24, 17, 5)
]
TORCH_RUNTIME = re.compile(r"^(cuda-toolkit|cuda-bindings|nvidia-|triton)", re.I)


def pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[name.strip().lower()] = version.strip()
    return out


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", *args]
    return subprocess.run(cmd, capture_output=True, text=True)


def stand_in(folder: Path, name: str, version: str, requires: list[str]) -> None:
    """A wheel with ``name``'s requirements and no code: the resolver needs nothing else."""
    dist = f"{name}-{version}.dist-info"
    meta = [f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as whl:
        whl.writestr(f"{dist}/METADATA", "\n".join(meta) + "\n")
        whl.writestr(
            f"{dist}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        whl.writestr(f"{dist}/RECORD", "")


def main() -> int:
    torch_version = pins(ROOT / "containers/torch-pin.txt")["torch"]
    lock = ROOT / "containers/requirements.lock"
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        report = tmpd / "torch.json"
        got = pip(
            "--no-deps",
            "--only-binary=:all:",
            *PLATFORM,
            "--target",
            str(tmpd / "t"),
            "--report",
            str(report),
            "--quiet",
            f"torch=={torch_version}",
        )
        if got.returncode:
            print(got.stderr[-2000:], file=sys.stderr)
            return 1
        requires = json.loads(report.read_text())["install"][0]["metadata"]["requires_dist"]
        kept = [r for r in requires if not TORCH_RUNTIME.match(r)]
        # a local version label sorts above the index's own release, so the stand-in wins
        stand_in(tmpd, "torch", f"{torch_version}+standin", kept)
        ds = pins(lock)["deepspeed"]
        if metadata.version("deepspeed") != ds:
            print(f"this environment's deepspeed is not the lock's {ds}", file=sys.stderr)
            return 1
        stand_in(tmpd, "deepspeed", f"{ds}+standin", metadata.requires("deepspeed") or [])
        project = ROOT / "pyproject.toml"
        deps = re.search(r"dependencies = \[(.*?)\]", project.read_text(), re.S)
        assert deps, "pyproject.toml: no dependencies list"
        reqs = re.findall(r'"([^"]+)"', deps.group(1))
        reqs = [r.split(";")[0] for r in reqs if not r.startswith("torch")]
        reqs += [f"torch=={torch_version}", "bpe-openai"]
        got = pip(
            "--only-binary=:all:",
            *PLATFORM,
            "--target",
            str(tmpd / "t"),
            "--find-links",
            str(tmpd),
            "-c",
            str(lock),
            "--report",
            str(tmpd / "all.json"),
            *reqs,
        )
        if got.returncode:
            print((got.stdout + got.stderr)[-4000:], file=sys.stderr)
            print("the image's package set does not resolve (above)", file=sys.stderr)
            return 1
        chosen = json.loads((tmpd / "all.json").read_text())["install"]
        print(
            f"the image's package set resolves: torch {torch_version} + {len(chosen) - 1} "
            "packages for CPython 3.12 manylinux x86_64, every pin from the lock"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
