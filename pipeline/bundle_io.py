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

from edgeport.errors import BundleError, EdgeportError
from edgeport.types import Artifact, FileRecord, TensorSpec, sha256_file

FIXED_TIME = 315532800  # 1980-01-01, the earliest time a zip entry can hold


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


def check_model_io(folder: Path, manifest: dict, bundle: Path) -> None:
    """Load the model in its runtime and run the recorded inputs; the outputs must match the record."""
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
        session = target.load(artifact, 1)
        results = session.run({s.name: np.zeros(s.concrete_shape(1), dtype=s.dtype) for s in inputs})
    except EdgeportError:
        raise
    except Exception as e:
        raise BundleError(f"{bundle}: the model does not load or run with the recorded inputs "
                          f"({str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__})") from e
    if len(results) != len(outputs):
        raise BundleError(f"{bundle}: the model has {len(results)} outputs, the manifest records {len(outputs)}")
    for spec, value in zip(outputs, results):
        value = np.asarray(value)
        if list(value.shape) != list(spec.concrete_shape(1)) or value.dtype != np.dtype(spec.dtype):
            raise BundleError(f"{bundle}: output {spec.name!r} is {value.dtype}{list(value.shape)}, the manifest "
                              f"records {spec.dtype}{list(spec.concrete_shape(1))}")
