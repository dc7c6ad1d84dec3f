"""The image is the tested environment: the def, the torch pin, the lock, the README and the GPU
results name one torch/CUDA pair, every install in the def is pinned, and its %test runs the
GPU smoke. (CI's tools/check_image_resolves.py runs pip's resolver on the same set.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEF = REPO / "containers" / "pronlora.def"


def torch_pin() -> str:
    text = (REPO / "containers" / "torch-pin.txt").read_text()
    (version,) = re.findall(r"^torch==([\w.]+)$", text, re.M)
    return version


def def_post() -> str:
    return DEF.read_text().split("%post", 1)[1].split("\n%", 1)[0]


def base_cuda() -> str:
    """major.minor of the base image's CUDA, from the def's pinned From line."""
    m = re.search(
        r"^From: nvidia/cuda:(\d+\.\d+)\.\d+-[\w.-]+@sha256:[0-9a-f]{64}$", DEF.read_text(), re.M
    )
    assert m, "the def's From: is not a CUDA base image pinned by digest"
    return m.group(1)


def gpu_results_versions() -> list[tuple[str, str]]:
    """(torch, CUDA) of every GPU results file that records its versions, newest first."""
    out = []
    for f in sorted((REPO / "bench" / "results").glob("*.json"), reverse=True):
        v = json.loads(f.read_text()).get("versions") if f.stat().st_size < 2**20 else None
        if isinstance(v, str):  # "2.11.0+cu130 13.0 5.17.0 0.21.0": torch, CUDA, ...
            torch, cuda = v.split()[:2]
            out.append((torch, cuda))
    return out


def test_the_def_the_pin_and_the_gpu_results_name_one_torch_cuda_pair() -> None:
    (torch, cuda), *_ = gpu_results_versions()
    assert torch.split("+")[0] == torch_pin(), "containers/torch-pin.txt vs bench/results"
    assert cuda == base_cuda(), "the def's CUDA base vs the CUDA the GPU results ran"
    assert torch.endswith("+cu" + cuda.replace(".", "")), torch


def test_the_lock_leaves_torch_to_the_pin_and_the_def_installs_both() -> None:
    lock = (REPO / "containers" / "requirements.lock").read_text()
    assert not re.search(r"^torch==", lock, re.M), "torch is pinned once, in torch-pin.txt"
    assert "torch-pin.txt" in lock.split("\n\n")[0]  # the header says where torch is
    assert re.search(r"^deepspeed==", lock, re.M)  # the multi-GPU engine, same version as CI
    post = def_post()
    assert "install -r /opt/pronlora/containers/torch-pin.txt" in post
    assert post.index("torch-pin.txt") < post.index("requirements.lock")  # torch first


def test_every_install_in_the_def_is_pinned() -> None:
    post = def_post().replace("\\\n", " ")
    installs = [line for line in post.splitlines() if "pip install" in line]
    assert len(installs) >= 3
    for line in installs:
        args = line.split("install", 1)[1].split()
        names = [a for a in args if not a.startswith(("-", "/", "$")) and "=" not in a[:1]]
        constrained = "-c" in args or "-r" in args
        assert constrained or all("==" in n for n in names), f"unpinned: {line.strip()}"
    assert re.search(r"flash-attn==[\d.]+\w*", post) and "FLASH_ATTENTION_FORCE_BUILD=TRUE" in post
    assert "--no-binary flash-attn" in post and 'TORCH_CUDA_ARCH_LIST="8.0;9.0"' in post


def test_the_image_tests_itself_with_the_gpu_smoke() -> None:
    text = DEF.read_text()
    test = text.split("%test", 1)[1].split("\n%", 1)[0]
    assert "containers/smoke.sh" in test
    smoke = (REPO / "containers" / "smoke.sh").read_text()
    for needed in (
        "torch.cuda.is_available()",
        "quantization=$quant",
        "for quant in bf16 nf4",
        "jobs/infer.py",
        "jobs/collect.py",
        "torch-pin.txt",
        "cache_from_source(",  # the image carries its bytecode
    ):
        assert needed in smoke, needed
    assert "containers/smoke.sh" in text.split("%files", 1)[1].split("\n%", 1)[0]


def test_the_readme_names_the_pair() -> None:
    readme = (REPO / "README.md").read_text()
    major_minor = ".".join(torch_pin().split(".")[:2])
    assert f"torch {torch_pin()}" in readme or f"torch {major_minor}" in readme
    assert f"CUDA {base_cuda()}" in readme


def test_the_upper_versions_lie_in_the_declared_ranges_above_the_lock() -> None:
    """tests/run_upper.sh tests what a plain ``pip install`` of pyproject's ranges resolves to;
    a pin outside a range, or below the lock, would test a set no lab gets."""
    import importlib.util
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    spec = importlib.util.spec_from_file_location(
        "resolves", REPO / "tools/check_image_resolves.py"
    )
    resolves = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(resolves)
    declared = {
        (r := Requirement(line)).name: r.specifier
        for line in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    }
    locked = resolves.pins(REPO / "containers" / "requirements.lock")
    upper = resolves.pins(REPO / "tests" / "upper-versions.txt")
    assert upper.keys() == {"transformers", "peft", "accelerate"}
    for name, version in upper.items():
        assert Version(version) in declared[name], (name, version, declared[name])
        assert Version(version) >= Version(locked[name]), (name, version, locked[name])
