"""`naiad push`: check a local model repository, then upload it to s3://, gs:// or as://."""

from __future__ import annotations

import argparse
import hashlib
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from naiad.config.settings import ServerSettings
from naiad.core.stores.base import StoreError, relative_files
from naiad.core.stores.objects import Content, ObjectStore
from naiad.core.stores.schemes import OBJECT_SCHEMES, open_for_writing

DESCRIPTION = textwrap.fill(
    "Upload a local model repository to object storage, where `naiad serve --model-repository=URI` (or Triton) "
    "reads it. The repository is first checked as `naiad check` would; one that would not load is not uploaded. "
    "Every file under REPO goes to URI/<its path under REPO> (hidden files and __pycache__ skipped); files whose "
    "size and MD5 already match the stored copy are not sent again. The bucket (or container) must exist. "
    "Credentials are read as the server reads them.",
    width=79,
)
EPILOG = """examples:
  MinIO or another S3-compatible server (host:port names the endpoint, over plain HTTP):
    AWS_ACCESS_KEY_ID=minioadmin AWS_SECRET_ACCESS_KEY=minioadmin \\
      naiad push models s3://localhost:9000/triton/models
  AWS S3 (credentials as the AWS CLI finds them; needs s3:PutObject, s3:ListBucket):
    naiad push models s3://my-bucket/models --delete
  Google Cloud Storage (GOOGLE_APPLICATION_CREDENTIALS, or gcloud auth application-default login):
    naiad push models gs://my-bucket/models
  Azure Blob Storage (AZURE_STORAGE_ACCOUNT and AZURE_STORAGE_KEY, or AZURE_STORAGE_CONNECTION_STRING):
    naiad push models as://myaccount/my-container/models

exit status: 0 done (or nothing to do), 1 the check or an upload failed, 2 wrong arguments.
For a local folder, copy with `rsync -a --delete models/ /srv/models/` instead."""


def add_parser(commands: Any) -> None:
    """Add `push` to the `naiad` command's subcommands (an argparse subparsers action)."""
    parser = commands.add_parser(
        "push",
        help="check a model repository and upload it to s3://, gs:// or as://",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("repository", type=Path, metavar="REPO", help="the local model repository folder")
    parser.add_argument(
        "uri", metavar="URI", help="where to: s3://bucket/path, s3://host:port/bucket/path, gs://bucket/path or "
        "as://account/container/path",
    )  # fmt: skip
    parser.add_argument("--no-check", action="store_true", help="upload even if the repository would not load")
    parser.add_argument(
        "--delete",
        action="store_true",
        help="also delete objects under URI that REPO no longer has, so that a server polling URI unloads removed "
        "models and versions (default: keep them)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="print what would be uploaded and deleted, change nothing"
    )


@dataclass(frozen=True)
class LocalFile:
    """One file of the repository: its path under REPO ("add_sub/1/model.py"), size and MD5."""

    relative: str
    path: Path
    size: int
    md5: bytes


@dataclass
class Plan:
    """What a push does: files to send, files already stored as they are, objects to delete or keep."""

    uploads: list[LocalFile] = field(default_factory=list)
    unchanged: list[LocalFile] = field(default_factory=list)
    deletions: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)  # stored objects REPO does not have, kept without --delete


def run_push(args: argparse.Namespace, write: Callable[[str], None]) -> int:
    """`naiad push`'s exit status: 0 done, 1 the check or the upload failed, 2 wrong arguments."""
    problem = _usage_problem(args.repository, args.uri)
    if problem:
        print(f"naiad push: {problem}", file=sys.stderr)
        return 2
    if not args.no_check and not _passes_check(args.repository, write):
        print(
            "naiad push: the repository would not load, so nothing was uploaded (--no-check uploads it anyway)",
            file=sys.stderr,
        )
        return 1
    try:
        store = open_for_writing(args.uri)
        plan = make_plan(local_files(args.repository), store.contents(), args.repository, args.delete)
        if args.dry_run:
            _show_dry_run(plan, args.uri, write)
        else:
            _execute(store, plan, args.uri, write)
    except (StoreError, OSError) as exc:
        print(f"naiad push: {exc}", file=sys.stderr)
        return 1
    return 0


def _usage_problem(repository: Path, uri: str) -> str | None:
    if not repository.is_dir():
        return f"'{repository}' is not a folder: REPO is the local model repository to upload"
    scheme, separator, _ = uri.partition("://")
    if not separator:
        return (
            f"'{uri}' is a local path: naiad push uploads to s3://, gs:// or as://; copy a repository to a folder "
            f"with `rsync -a --delete {repository}/ {uri}/` (or cp -r)"
        )
    if scheme not in OBJECT_SCHEMES:
        return f"unknown scheme '{scheme}://' in '{uri}': use s3://, gs:// or as://"
    return None


def _passes_check(repository: Path, write: Callable[[str], None]) -> bool:
    from naiad.tools.check import run_check  # loads the server's code: only when checking

    settings = ServerSettings(model_repositories=(str(repository),), exit_on_error=False)
    return run_check(settings, write) == 0


def local_files(repository: Path) -> list[LocalFile]:
    """Every file under the repository, as the stores see it (hidden entries and __pycache__ skipped)."""
    found = []
    for relative in relative_files(repository):
        if not relative.endswith("/"):
            path = repository / relative
            found.append(LocalFile(relative, path, path.stat().st_size, _md5(path)))
    return found


def _md5(path: Path) -> bytes:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


def make_plan(files: list[LocalFile], stored: dict[str, Content], repository: Path, delete: bool) -> Plan:
    """Which files to send (missing, or another size or MD5 than stored), and which stored objects REPO lacks; a
    folder marker object ("name/") is kept while the folder exists."""
    plan = Plan()
    for file in files:
        same = stored.get(file.relative) == (file.size, file.md5)
        (plan.unchanged if same else plan.uploads).append(file)
    wanted = {file.relative for file in files}
    for relative in sorted(stored):
        if relative not in wanted and not (relative.endswith("/") and (repository / relative).is_dir()):
            (plan.deletions if delete else plan.extra).append(relative)
    return plan


def _show_dry_run(plan: Plan, uri: str, write: Callable[[str], None]) -> None:
    for file in plan.uploads:
        write(f"  would upload  {file.relative} ({_size(file.size)})")
    for relative in plan.deletions:
        write(f"  would delete  {relative}")
    total = sum(file.size for file in plan.uploads)
    write(
        f"dry run: {len(plan.uploads)} file(s) to upload ({_size(total)}), {len(plan.unchanged)} unchanged, "
        f"{len(plan.deletions)} object(s) to delete under {uri}; nothing was changed"
    )
    _mention_extra(plan, uri, write)


def _execute(store: ObjectStore[Any], plan: Plan, uri: str, write: Callable[[str], None]) -> None:
    progress = Progress(len(plan.uploads), sum(file.size for file in plan.uploads), sys.stderr)
    for file in plan.uploads:
        store.upload(file.relative, file.path, file.md5)
        progress.advance(file.size)
    progress.close()
    for relative in plan.deletions:
        store.delete(relative)
    deleted = f", {len(plan.deletions)} deleted" if plan.deletions else ""
    write(
        f"pushed to {uri}: {len(plan.uploads)} file(s) uploaded ({_size(progress.total)}), "
        f"{len(plan.unchanged)} unchanged{deleted}"
    )
    _mention_extra(plan, uri, write)


def _mention_extra(plan: Plan, uri: str, write: Callable[[str], None]) -> None:
    if plan.extra:
        shown = ", ".join(plan.extra[:3]) + (", ..." if len(plan.extra) > 3 else "")
        write(
            f"{len(plan.extra)} object(s) under {uri} are not in the repository ({shown}): kept; --delete removes them"
        )


class Progress:
    """Bytes and files sent so far, on one line rewritten in place on a terminal, else a line at each quarter."""

    def __init__(self, files: int, total: int, stream: TextIO) -> None:
        self.files, self.total, self._stream = files, total, stream
        self._done_files = self._done_bytes = self._quarters = 0
        self._tty = stream.isatty()
        if files:
            self._show()

    def advance(self, size: int) -> None:
        """One more file sent."""
        self._done_files += 1
        self._done_bytes += size
        quarters = 4 * self._done_bytes // self.total if self.total else 4 * self._done_files // self.files
        if self._tty or quarters > self._quarters:
            self._quarters = quarters
            self._show()

    def close(self) -> None:
        """End the line rewritten in place."""
        if self._tty and self.files:
            self._stream.write("\n")
            self._stream.flush()

    def _show(self) -> None:
        share = 100 * self._done_bytes // self.total if self.total else 100 * self._done_files // self.files
        line = (
            f"uploading: {_size(self._done_bytes)} / {_size(self.total)} ({share}%), "
            f"{self._done_files} / {self.files} files"
        )
        self._stream.write(f"\r{line}\x1b[K" if self._tty else f"{line}\n")
        self._stream.flush()


def _size(count: int) -> str:
    """A byte count as people read it: 512 B, 1.5 KB, 2.0 GB (powers of 1024)."""
    value, unit = float(count), "B"
    for bigger in ("KB", "MB", "GB", "TB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
