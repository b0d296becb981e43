"""Bundles on disk: reproducible archives, extraction that cannot escape, and verification."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

import numpy as np

from edgeport.errors import EdgeportError
from edgeport.types import Artifact, FileRecord, TensorSpec, sha256_file

FIXED_TIME = 315532800  # 1980-01-01, the earliest time a zip entry can hold


class BundleError(EdgeportError):
    """A bundle is malformed, tampered with, or unsafe to unpack."""


def archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if name.endswith(".zip"):
        return "zip"
    return None


def bundle_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def write_archive(folder: Path, out: Path) -> Path:
    """Pack `folder` so that the same files always give the same bytes: sorted entries,
    fixed timestamps, owners and permissions, no gzip file name or time."""
    names = bundle_files(folder)
    root = folder.name
    tmp = out.with_name(f".{out.name}.partial")
    if archive_kind(out) == "zip":
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            for name in names:
                info = zipfile.ZipInfo(f"{root}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, (folder / name).read_bytes())
    else:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name in names:
                data = (folder / name).read_bytes()
                info = tarfile.TarInfo(f"{root}/{name}")
                info.size, info.mtime, info.mode = len(data), FIXED_TIME, 0o644
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                tar.addfile(info, io.BytesIO(data))
        with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as gz:
            gz.write(buffer.getvalue())
    os.replace(tmp, out)
    return out


def check_member(name: str, where: Path) -> None:
    path = PurePosixPath(name)
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise BundleError(f"{where}: refusing archive entry with an absolute path: {name}")
    if ".." in path.parts:
        raise BundleError(f"{where}: refusing archive entry that climbs out of the bundle: {name}")


def link_escapes(name: str, target: str) -> bool:
    if PurePosixPath(target).is_absolute():
        return True
    depth = 0
    for part in (PurePosixPath(name).parent / target).parts:
        depth += -1 if part == ".." else (0 if part == "." else 1)
        if depth < 0:
            return True
    return False


def safe_extract(archive: Path, dest: Path) -> Path:
    """Unpack into `dest`, refusing absolute paths, `..`, links that point outside and device files."""
    kind = archive_kind(archive)
    if kind == "zip":
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                check_member(info.filename, archive)
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise BundleError(f"{archive}: refusing symbolic link in archive: {info.filename}")
            z.extractall(dest)
    elif kind == "tar.gz":
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar.getmembers():
                check_member(member.name, archive)
                if member.issym() or member.islnk():
                    if link_escapes(member.name, member.linkname):
                        raise BundleError(f"{archive}: refusing link that points outside the bundle: "
                                          f"{member.name} -> {member.linkname}")
                elif not (member.isfile() or member.isdir()):
                    raise BundleError(f"{archive}: refusing special file in archive: {member.name}")
            tar.extractall(dest, filter="data")  # the standard library's own guard, as a second line
    else:
        raise BundleError(f"{archive}: not a bundle archive (.tar.gz or .zip)")
    tops = [p for p in dest.iterdir()]
    return tops[0] if len(tops) == 1 and tops[0].is_dir() else dest


@contextmanager
def opened(bundle: Path):
    """A bundle folder, or an archive unpacked safely into a temporary folder."""
    if bundle.is_dir():
        yield bundle
        return
    if not bundle.is_file():
        raise BundleError(f"bundle not found: {bundle}")
    with tempfile.TemporaryDirectory(prefix="edgeport-bundle-") as tmp:
        yield safe_extract(bundle, Path(tmp))


def schema() -> dict:
    from importlib.resources import files

    return json.loads((files("edgeport") / "schemas" / "manifest.schema.json").read_text())


def verify_bundle(bundle: Path) -> dict:
    """Schema, every hash and size, the model loads in its runtime and takes the recorded IO.
    Raises BundleError naming the first problem; returns the manifest."""
    import jsonschema

    with opened(bundle) as folder:
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise BundleError(f"{bundle}: no manifest.json")
        try:
            manifest = json.loads(manifest_path.read_text())
        except json.JSONDecodeError as e:
            raise BundleError(f"{bundle}: manifest.json is not valid JSON ({e})") from None
        error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema()).iter_errors(manifest))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
            raise BundleError(f"{bundle}: manifest.json does not match its schema at {where}: {error.message}")
        for record in manifest["files"]:
            check_member(record["path"], bundle)
            path = folder / record["path"]
            if not path.is_file():
                raise BundleError(f"{bundle}: {record['path']} is listed in the manifest but missing")
            if path.stat().st_size != record["size_bytes"]:
                raise BundleError(f"{bundle}: {record['path']} is {path.stat().st_size} bytes, the manifest says "
                                  f"{record['size_bytes']}")
            if sha256_file(path) != record["sha256"]:
                raise BundleError(f"{bundle}: {record['path']} does not match its sha256 in the manifest")
        check_model_io(folder, manifest, bundle)
        return manifest


def manifest_mismatches(manifest: dict, declared: dict) -> list[str]:
    """Every IO field and the precision of the manifest against what the model file declares."""
    from edgeport.targets.base import numerics_of

    problems = []
    if numerics_of(manifest["precision"]) != declared["numerics"]:
        problems.append(f"precision {manifest['precision']!r}, but the model file's weights are {declared['numerics']}")
    for kind in ("inputs", "outputs"):
        found = {t["name"]: t for t in declared[kind]}
        listed = {s.get("runtime_name") or s["name"]: s for s in manifest[kind]}
        if set(found) != set(listed):
            problems.append(f"{kind} {sorted(listed)}, but the model file has {sorted(found)}")
            continue
        for key, spec in listed.items():
            real, where = found[key], f"{kind[:-1]} {spec['name']!r}"
            shape = [d if isinstance(d, int) else None for d in spec["shape"]]
            if len(shape) != len(real["shape"]) or any(a is not None and b is not None and a != b
                                                       for a, b in zip(shape, real["shape"])):
                problems.append(f"{where}: shape {spec['shape']}, the model file's is {real['shape']}")
            if spec["dtype"] != real["dtype"]:
                problems.append(f"{where}: dtype {spec['dtype']}, the model file's is {real['dtype']}")
            for field in ("scale", "zero_point"):
                a, b = spec.get(field), real[field]
                if (a is None) != (b is None) or (a is not None and abs(a - b) > 1e-6 * max(1.0, abs(b))):
                    problems.append(f"{where}: {field} {a}, the model file's is {b}")
            axes = spec.get("source_axes")
            if axes is not None and sorted(axes) != list(range(len(shape))):
                problems.append(f"{where}: source_axes {axes} is not a permutation of its {len(shape)} axes")
            if spec.get("layout") == "NHWC" and len(shape) == 4 and axes not in (None, [0, 2, 3, 1]):
                problems.append(f"{where}: layout NHWC with source_axes {axes}")
    return problems


def check_model_io(folder: Path, manifest: dict, bundle: Path) -> None:
    """The manifest's inputs, outputs and precision against what the model file declares; then the
    bundle's own example, run on its samples: the app's feeding path must reproduce PyTorch."""
    import subprocess
    import sys

    from edgeport import targets

    inputs = [TensorSpec.model_validate(s) for s in manifest["inputs"]]
    outputs = [TensorSpec.model_validate(s) for s in manifest["outputs"]]
    model_files = [manifest["model_file"]] + [f["path"] for f in manifest["files"]
                                              if f["path"].endswith(".bin") and "/" not in f["path"]]
    artifact = Artifact(id="bundle", target=manifest["target"], format="bundle", precision=manifest["precision"],
                        files=[FileRecord(path=p) for p in model_files], inputs=inputs, outputs=outputs)
    artifact._root = folder
    target = targets.get(manifest["target"])
    try:
        declared = target.declared(artifact)
    except EdgeportError:
        raise
    except Exception as e:  # noqa: BLE001 - any runtime's own error for a file it cannot read
        raise BundleError(f"{bundle}: the model file does not load "
                          f"({str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__})") from e
    problems = manifest_mismatches(manifest, declared)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise BundleError(f"{bundle}: manifest.json does not match the model file: {problems[0]}{more}")
    if not (folder / "samples.npz").is_file() or not manifest.get("self_test"):
        raise BundleError(f"{bundle}: no samples.npz to run example.py --self-test on; rebuild the bundle")
    try:
        done = subprocess.run([sys.executable, "example.py", "--self-test"], cwd=folder, capture_output=True,
                              text=True, timeout=600)
    except subprocess.TimeoutExpired as e:
        raise BundleError(f"{bundle}: example.py --self-test did not finish within 600 s") from e
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()[-1]
        raise BundleError(f"{bundle}: example.py --self-test failed: {last}")
