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
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from edgeport.errors import BundleError, EdgeportError, first_line
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


# An archive is checked against its manifest before anything is unpacked: every entry must be
# listed with its exact size, and none may decompress more than MAX_RATIO:1 (deflate reaches
# ~1000:1 on zeros; real model files, weights and text stay far below). MANIFEST_LIMIT caps the
# one file read before that check.
MAX_RATIO = 200
RATIO_FLOOR = 1 << 20  # smaller entries cannot fill a disk, whatever their ratio
MANIFEST_LIMIT = 4 << 20
# What a damaged archive raises while it is read (a truncated gzip stream ends in EOFError).
UNREADABLE = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile,
              NotImplementedError)


@dataclass
class Entry:
    name: str  # as stored in the archive, normalised ("./a/" is "a")
    kind: str  # file, dir, link, special
    size: int = 0  # unpacked bytes
    packed: int = 0  # compressed bytes: the entry's own in a zip, the whole archive's in a tar.gz
    link: str = ""


class BundleCheck(NamedTuple):
    manifest: dict
    warnings: list[str]  # unlisted files and links that were tolerated (not --strict)


def zip_entries(z: zipfile.ZipFile, archive: Path) -> list[Entry]:
    entries = []
    for info in z.infolist():
        check_member(info.filename, archive)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise BundleError(f"{archive}: refusing symbolic link in archive: {info.filename}")
        if info.flag_bits & 0x1:
            raise BundleError(f"{archive}: {info.filename} is encrypted; a bundle is never encrypted")
        kind = "dir" if info.is_dir() else "file"
        entries.append(Entry(normal(info.filename, kind, archive), kind, info.file_size, info.compress_size))
    return entries


def normal(name: str, kind: str, archive: Path) -> str:
    path = PurePosixPath(name).as_posix()
    if path == "." and kind != "dir":
        raise BundleError(f"{archive}: refusing archive entry without a name ({name!r})")
    return path


class CappedReader(io.RawIOBase):
    """A stream that raises BundleError past `limit` bytes: a tar.gz is read through it, so a
    bomb costs at most `limit` bytes of decompression, in memory, before it is refused."""

    def __init__(self, stream, limit: int, archive: Path):
        self.stream, self.limit, self.archive, self.total = stream, limit, archive, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.stream.readinto(buffer)
        self.total += n
        if self.total > self.limit:
            raise BundleError(f"{self.archive}: unpacks to more than {self.limit} bytes, {MAX_RATIO} times its "
                              "compressed size; refusing a likely decompression bomb")
        return n


@contextmanager
def tar_stream(archive: Path):
    """The members of a tar.gz, read once, in order, never seeking (each pass decompresses anew)."""
    limit = MAX_RATIO * archive.stat().st_size + RATIO_FLOOR
    with open(archive, "rb") as raw, gzip.GzipFile(fileobj=raw) as gz, \
            tarfile.open(fileobj=io.BufferedReader(CappedReader(gz, limit, archive)), mode="r|") as tar:
        yield tar


def tar_entries(archive: Path) -> tuple[list[Entry], dict[str, bytes]]:
    """First pass over a tar.gz: every member's header (a bomb is refused by its header's size,
    before its data is read), and the bytes of each manifest.json."""
    entries, manifests = [], {}
    packed = archive.stat().st_size
    with tar_stream(archive) as tar:
        for member in tar:
            check_member(member.name, archive)
            kind = ("link" if member.issym() or member.islnk() else "file" if member.isfile()
                    else "dir" if member.isdir() else "special")
            entry = Entry(normal(member.name, kind, archive), kind, member.size, packed, member.linkname)
            if kind == "link" and link_escapes(member.name, member.linkname):
                raise BundleError(f"{archive}: refusing link that points outside the bundle: {member.name} -> {member.linkname}")
            if kind == "special":
                raise BundleError(f"{archive}: refusing special file in archive: {member.name}")
            check_ratio(entry, archive)
            entries.append(entry)
            if kind == "file" and PurePosixPath(entry.name).name == "manifest.json" and member.size <= MANIFEST_LIMIT:
                manifests[entry.name] = tar.extractfile(member).read()
    return entries, manifests


def check_ratio(entry: Entry, archive: Path) -> None:
    if entry.size > RATIO_FLOOR and entry.size > MAX_RATIO * max(entry.packed, 1):
        raise BundleError(f"{archive}: {entry.name} compresses {entry.size // max(entry.packed, 1)}:1 "
                          f"({entry.size} bytes from {entry.packed}); refusing a likely decompression bomb "
                          f"(the limit is {MAX_RATIO}:1)")


def bundle_prefix(entries: list[Entry], archive: Path) -> str:
    """'<folder>/' when every entry sits in one top folder that holds manifest.json, else ''."""
    files = {e.name for e in entries if e.kind == "file"}
    tops = {PurePosixPath(e.name).parts[0] for e in entries if e.name != "."}
    if len(tops) == 1 and f"{next(iter(tops))}/manifest.json" in files:
        return f"{next(iter(tops))}/"
    if "manifest.json" in files:
        return ""
    raise BundleError(f"{archive}: no manifest.json")


def admit(entries: list[Entry], prefix: str, manifest: dict, archive: Path, strict: bool) -> tuple[set[str], list[str]]:
    """The entries to unpack (by archive name), and those skipped; raises on anything unsafe."""
    listed = {record["path"]: record["size_bytes"] for record in manifest["files"]}
    wanted: set[str] = set()
    skipped: list[str] = []
    for entry in entries:
        rel = entry.name.removeprefix(prefix)
        if entry.kind == "dir":
            continue
        if entry.kind == "link":  # links out of the bundle and special files were refused on sight
            problem = f"{rel} is a link to {entry.link} (a bundle holds regular files only)"
        elif rel != "manifest.json" and rel not in listed:
            problem = f"{rel} is not listed in manifest.json"
        else:
            problem = None
        if problem:
            if strict:
                raise BundleError(f"{archive}: {problem}; refused before unpacking (--no-strict skips such entries)")
            skipped.append(f"{problem}: skipped")
            continue
        if entry.name in wanted:
            raise BundleError(f"{archive}: {entry.name} appears twice in the archive")
        if rel != "manifest.json" and entry.size != listed[rel]:
            raise BundleError(f"{archive}: {rel} is {entry.size} bytes in the archive, the manifest says {listed[rel]}")
        check_ratio(entry, archive)
        wanted.add(entry.name)
    return wanted, skipped


def copy_capped(source, target: Path, size: int, archive: Path) -> None:
    """Write at most `size` bytes of `source` to a new file `target`."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        out = open(target, "xb")
    except OSError as e:  # e.g. an entry `a` and an entry `a/b`
        raise BundleError(f"{archive}: cannot unpack {target.name}: {e.strerror}; entries clash") from e
    with out:
        left = size
        while block := source.read(min(left + 1, 1 << 20)):
            left -= len(block)
            if left < 0:
                raise BundleError(f"{archive}: {target.name} holds more than the {size} bytes its header says")
            out.write(block)


def safe_extract(archive: Path, dest: Path, strict: bool = True) -> tuple[Path, list[str]]:
    """Unpack a bundle archive into `dest` after checking every entry against the manifest:
    nothing outside the bundle (absolute paths, `..`, links out, device files), nothing unlisted
    (refused when `strict`, else skipped and named), no entry of another size than listed or that
    decompresses more than MAX_RATIO:1. Returns the bundle folder and what was skipped."""
    kind = archive_kind(archive)
    if kind is None:
        raise BundleError(f"{archive}: not a bundle archive (.tar.gz or .zip)")
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as z:
                entries = zip_entries(z, archive)
                prefix = bundle_prefix(entries, archive)
                manifest_entry = next(e for e in entries if e.name == f"{prefix}manifest.json")
                if manifest_entry.size > MANIFEST_LIMIT:
                    raise BundleError(f"{archive}: manifest.json is {manifest_entry.size} bytes; a manifest is a few KB")
                manifest = read_manifest(z.read(manifest_entry.name), archive)
                wanted, skipped = admit(entries, prefix, manifest, archive, strict)
                for entry in entries:
                    if entry.name in wanted:
                        with z.open(entry.name) as source:
                            copy_capped(source, dest / entry.name, entry.size, archive)
        else:
            entries, manifests = tar_entries(archive)
            prefix = bundle_prefix(entries, archive)
            if f"{prefix}manifest.json" not in manifests:
                raise BundleError(f"{archive}: manifest.json is larger than {MANIFEST_LIMIT} bytes; a manifest is a few KB")
            manifest = read_manifest(manifests[f"{prefix}manifest.json"], archive)
            wanted, skipped = admit(entries, prefix, manifest, archive, strict)
            with tar_stream(archive) as tar:
                for member in tar:
                    name = PurePosixPath(member.name).as_posix()
                    if name in wanted and member.isfile():
                        copy_capped(tar.extractfile(member), dest / name, member.size, archive)
                        wanted.discard(name)  # a second member of that name is never written
    except UNREADABLE as e:
        raise BundleError(f"{archive}: not a readable {kind} archive, truncated or corrupt ({first_line(e)}); "
                          "pack it again with `edgeport package`") from e
    return dest / prefix if prefix else dest, skipped


def folder_extras(folder: Path, manifest: dict) -> list[str]:
    """Files a folder bundle holds beyond its manifest: unlisted files, links, special files."""
    listed = {record["path"] for record in manifest["files"]} | {"manifest.json"}
    found = []
    for root, dirs, files in os.walk(folder):
        for name in sorted(dirs + files):
            path = Path(root) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                found.append(f"{rel} is a symbolic link to {os.readlink(path)}")
            elif name in files and not path.is_file():
                found.append(f"{rel} is not a regular file")
            elif name in files and rel not in listed:
                found.append(f"{rel} is not listed in manifest.json")
    return found


@contextmanager
def opened(bundle: Path, strict: bool = True):
    """(folder, skipped): a bundle folder, or an archive unpacked safely into a temporary folder."""
    if bundle.is_dir():
        yield bundle, []
        return
    if not bundle.is_file():
        raise BundleError(f"bundle not found: {bundle}")
    with tempfile.TemporaryDirectory(prefix="edgeport-bundle-") as tmp:
        yield safe_extract(bundle, Path(tmp), strict)


def schema() -> dict:
    from importlib.resources import files

    return json.loads((files("edgeport") / "schemas" / "manifest.schema.json").read_text())


def read_manifest(data: bytes, bundle: Path) -> dict:
    """The manifest's JSON, checked against its schema."""
    import jsonschema

    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BundleError(f"{bundle}: manifest.json is not valid JSON ({e.__class__.__name__}: "
                          f"{str(e)[:120]})") from None
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema()).iter_errors(manifest))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        raise BundleError(f"{bundle}: manifest.json does not match its schema at {where}: {error.message[:200]}")
    return manifest


def verify_bundle(bundle: Path, strict: bool | None = None) -> BundleCheck:
    """Schema, every hash and size, the model loads in its runtime and takes the recorded IO.
    Unlisted files and links fail with `strict` (the default for archives, whose unlisted
    entries are never unpacked) and are returned as warnings otherwise. Raises BundleError
    naming the first problem."""
    strict = not bundle.is_dir() if strict is None else strict
    with opened(bundle, strict) as (folder, warnings):
        manifest_path = folder / "manifest.json"
        if not manifest_path.is_file():
            raise BundleError(f"{bundle}: no manifest.json")
        manifest = read_manifest(manifest_path.read_bytes(), bundle)
        extras = folder_extras(folder, manifest) if bundle.is_dir() else []
        if extras and strict:
            more = f" (and {len(extras) - 1} more)" if len(extras) > 1 else ""
            raise BundleError(f"{bundle}: {extras[0]}{more}; --strict refuses what the manifest does not list")
        warnings = [*warnings, *extras]
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
        return BundleCheck(manifest, warnings)


def manifest_mismatches(manifest: dict, declared: dict) -> list[str]:
    """Every IO field and the precision of the manifest against what the model file declares."""
    from edgeport.targets.base import numerics_of

    problems = []
    if declared["numerics"] is not None and numerics_of(manifest["precision"]) != declared["numerics"]:
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
