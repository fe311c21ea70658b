"""What a device run of gpu_check.sh needs beyond the device's own image, gathered here and installed there.

The device machine reaches no network and receives only the repository (plus ``carry`` paths, 64 MiB in all);
its image has CUDA PyTorch, Triton and the Hugging Face stack but not radixgen's serving dependencies, and
``../shared`` (models, datasets) stays behind. So, on a machine with PyPI access:

    bash benchmarks/gpu_check.sh --prepare      # = python benchmarks/gpu_check_bundle.py prepare

writes ``.gpu_check_bundle/`` (git-ignored): ``wheels/`` with every distribution radixgen's requirements pull in
(the versions installed here, as CPython 3.12 manylinux x86-64 wheels), except the CUDA / PyTorch / Hugging Face
stack the image provides (``DEVICE_PROVIDED``, whose own requirements are the image's business) and the
dependencies of features the check does not use (``NOT_USED``), ``shared/`` with the models and dataset the check
reads, and ``manifest.json``. On the device, gpu_check.sh runs ``install``: the wheels of distributions the device
lacks go into ``--target`` (put on PYTHONPATH), and radixgen itself is laid out there as links into the working
tree following pyproject.toml's package-dir (so the run tests exactly the tree that was sent; no build step).
Standard library only (the device's python runs ``install`` before anything else is there).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
# what the check reads from ../shared: the golden-text model, the benchmark model's config + tokenizer, prompts
SHARED_PATHS = ("models/stories260K", "models/bench-llama-40m", "datasets/sharegpt")
# on the device image already (KINDS.md of the device tool: CUDA PyTorch, Triton, Hugging Face); the CUDA builds
# are also far too large to carry
DEVICE_PROVIDED = {
    "torch", "triton", "numpy", "sympy", "mpmath", "networkx", "filelock", "fsspec", "jinja2", "markupsafe",
    "typing-extensions", "setuptools", "transformers", "tokenizers", "huggingface-hub", "hf-xet", "safetensors",
    "sentencepiece", "protobuf", "pyyaml", "packaging", "regex", "tqdm", "psutil", "requests", "urllib3", "certifi",
    "idna", "charset-normalizer", "httpx", "httpcore", "h11", "anyio", "sniffio", "click", "rich", "pygments",
    "markdown-it-py", "mdurl", "prometheus-client", "attrs",
}  # fmt: skip
# imported lazily by features the check does not use (torchao: quantization, gguf: GGUF loading, llguidance: a
# grammar backend, openai: the DSL's OpenAI backend); left out because transformers imports torchao when it is
# installed, and this torchao is built for the project's torch, not the image's
NOT_USED = {"torchao", "gguf", "llguidance", "openai"}
# wheel tags pip may pick (it matches a platform tag exactly): glibc 2.17 ... 2.35, the image being newer
PLATFORMS = tuple(f"manylinux_2_{n}_x86_64" for n in range(35, 16, -1)) + ("manylinux2014_x86_64",)
DEVICE_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3"}  # the image's python3 (KINDS.md)
MAX_BUNDLE_BYTES = 56 << 20  # the device's 64 MiB for tree + carry, less room for the repository itself


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(root: str = "radixgen", stop: frozenset[str] = frozenset()) -> dict[str, str]:
    """Distributions (canonical name → installed version) that ``root``'s requirements pull in here, without
    extras, markers evaluated for the device's Python; names in ``stop`` are neither included nor followed.

    Raises:
        ValueError: ``root`` is not installed.
    """
    from packaging.requirements import Requirement  # prepare runs in the project's venv, which has packaging

    found: dict[str, str] = {}
    todo = [root]
    while todo:
        name = canonical(todo.pop())
        if name in found or name in stop:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            if name == root:
                raise ValueError(f"{root} is not installed in {sys.executable}") from None
            continue
        found[name] = dist.version
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": "", **DEVICE_PYTHON}):
                todo.append(req.name)
    found.pop(canonical(root))
    return found


def prepare(bundle: Path) -> int:
    """Fill ``bundle`` (wheels, shared files, manifest); returns 0, or 1 when it comes out too large."""
    wanted = dict(sorted(requirement_closure(stop=frozenset(DEVICE_PROVIDED | NOT_USED)).items()))
    wheels = bundle / "wheels"
    shutil.rmtree(bundle, ignore_errors=True)
    wheels.mkdir(parents=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
           "3.12", "--implementation", "cp", "-d", str(wheels)]  # fmt: skip
    cmd += [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(cmd + [f"{n}=={v}" for n, v in wanted.items()], check=True)
    for rel in SHARED_PATHS:
        shutil.copytree(SHARED / rel, bundle / "shared" / rel)
    files = sorted(p for p in bundle.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    names = sorted(p.name for p in wheels.iterdir())
    manifest = {"distributions": wanted, "wheels": names, "shared": list(SHARED_PATHS), "bytes": size}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    print(f"{bundle}: {len(names)} wheels, {len(SHARED_PATHS)} shared folders, {size / 2**20:.1f} MiB")
    if size > MAX_BUNDLE_BYTES:
        print(f"too large for the device's working-tree limit ({MAX_BUNDLE_BYTES >> 20} MiB)", file=sys.stderr)
        return 1
    return 0


def _wheel_distribution(wheel: Path) -> str:
    return canonical(wheel.name.split("-", 1)[0])


def link_package(repo: Path, target: Path) -> list[str]:
    """Lay out radixgen's packages under ``target`` as links into ``repo``, following pyproject.toml's
    ``[tool.setuptools] package-dir`` (a mapped package becomes a link to its folder unless its parent's link
    already reaches that folder), plus a dist-info with the project's name and version. Returns the links made."""
    project = tomllib.loads((repo / "pyproject.toml").read_text())
    package_dir: dict[str, str] = project["tool"]["setuptools"]["package-dir"]
    made = []
    for package, folder in sorted(package_dir.items(), key=lambda kv: kv[0].count(".")):
        dest = target / package.replace(".", "/")
        if dest.exists() and dest.resolve() == (repo / folder).resolve():
            continue  # reached through a parent's link
        if "." not in package:  # top-level package: a real directory, so that subpackages can be linked into it
            dest.mkdir(parents=True)
            for child in (repo / folder).iterdir():
                (dest / child.name).symlink_to(child)
        else:
            dest.symlink_to(repo / folder, target_is_directory=True)
        made.append(f"{package} -> {folder}")
    name, version = project["project"]["name"], project["project"]["version"]
    info = target / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return made


def install(bundle: Path, target: Path, repo: Path) -> int:
    """Install into ``target`` the bundle's wheels whose distribution this python lacks, and link radixgen."""
    wheels = sorted((bundle / "wheels").glob("*.whl"))
    missing = []
    for wheel in wheels:
        try:
            metadata.distribution(_wheel_distribution(wheel))
        except metadata.PackageNotFoundError:
            missing.append(wheel)
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    if missing:
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--no-cache-dir", "--target", str(target), *map(str, missing)]  # fmt: skip
        subprocess.run(cmd, check=True)
    links = link_package(repo, target)
    names = ", ".join(_wheel_distribution(w) for w in missing) or "none missing"
    print(f"installed {len(missing)} of {len(wheels)} bundled wheels into {target} ({names}); radixgen: "
          + "; ".join(links))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="here: gather wheels and shared files into --bundle")
    p.add_argument("--bundle", type=Path, default=REPO / ".gpu_check_bundle")
    p = sub.add_parser("install", help="on the device: install missing wheels and link radixgen into --target")
    p.add_argument("--bundle", type=Path, default=REPO / ".gpu_check_bundle")
    p.add_argument("--target", type=Path, required=True)
    p.add_argument("--repo", type=Path, default=REPO)
    args = parser.parse_args(argv)
    if args.command == "prepare":
        return prepare(args.bundle)
    if not (args.bundle / "wheels").is_dir():
        parser.error(f"--bundle: {args.bundle} has no wheels/ (run gpu_check.sh --prepare first)")
    return install(args.bundle, args.target, args.repo)


if __name__ == "__main__":
    sys.exit(main())
