"""One persistence layer: atomic, versioned files and directories, checked readers, failure records.

Writing
    Every artifact is written to a hidden temporary name in its destination folder
    (``.<name>.<pid>.<random>.tusss-tmp``), flushed and ``fsync``-ed, moved into place with ``os.replace`` and
    the folder is ``fsync``-ed. A crash, a ``SIGKILL`` or a full disk (``ENOSPC``) at any point therefore leaves
    either the previous complete file or none, never a half-written one under the real name. Directories are
    built under a hidden temporary name and renamed into place (:func:`atomic_directory`).
    Temporary files left behind by a killed process are hidden, and :func:`remove_stale_temps` deletes those
    whose process is gone.

Reading
    :func:`read_json`, :func:`load_npy` and :func:`load_npz` turn every corruption (missing, empty, truncated,
    not the expected format, another format version, wrong shape or dtype, NaN/inf where forbidden, a missing
    companion file) into one :class:`~tusss.errors.CorruptFileError` whose one-line message names the file,
    says what is wrong and how to fix it (:func:`corrupt`).

Long commands
    :class:`FailureLog` records the items a command had to skip (``failures.jsonl`` beside the output: one JSON
    object ``{"id", "reason"}`` per line) and implements ``--fail-fast``; :func:`fault_point` is the
    deterministic kill hook the fault-injection tests use (``TUSSS_FAULT_KILL_AFTER=N`` SIGKILLs the process
    after the N-th completed item).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import secrets
import shutil
import signal
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from tusss.errors import CorruptFileError, TusssError

__all__ = [
    "TMP_SUFFIX",
    "FAILURES",
    "DiskFullError",
    "FailureLog",
    "ItemFailedError",
    "atomic_directory",
    "atomic_save_npy",
    "atomic_save_npz",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "corrupt",
    "fault_point",
    "fsync_dir",
    "load_npy",
    "load_npz",
    "one_line",
    "read_json",
    "read_recipe",
    "remove_stale_temps",
]

TMP_SUFFIX = ".tusss-tmp"
FAILURES = "failures.jsonl"
KILL_ENV = "TUSSS_FAULT_KILL_AFTER"


# ---------------------------------------------------------------------------------------------- messages
def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(str(text).split())


def corrupt(path: str | os.PathLike, problem: str, fix: str = "delete the file") -> CorruptFileError:
    """The one error for a damaged artifact: ``"<path>: <problem>; <fix>"`` on one line.

    Args:
        path: the offending file or folder.
        problem: what is wrong ("truncated", "format version 3, this tusss reads 1", ...).
        fix: what the user should do, e.g. "re-run `tusss embed` to rewrite it" or "delete the file".
    """
    return CorruptFileError(one_line(f"{os.fspath(path)}: {problem}; {fix}"))


def _describe(e: BaseException) -> str:
    msg = one_line(e)
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# ---------------------------------------------------------------------------------------------- writing
class DiskFullError(TusssError, OSError):
    """The disk (or quota) filled up while writing an artifact; the previous complete file is intact."""


def fsync_dir(path: str | os.PathLike) -> None:
    """``fsync`` a directory so that a rename inside it survives a power cut (no-op where unsupported)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{TMP_SUFFIX}")


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Context manager yielding a file object whose content appears at ``path`` only on success.

    The data go to a hidden temporary file in the same folder (created with the usual permissions), which is
    flushed, ``fsync``-ed and moved over ``path`` with ``os.replace`` when the block exits normally; on any
    exception (``ENOSPC`` and ``KeyboardInterrupt`` included) the temporary file is removed and ``path`` keeps
    its previous content. Parent folders are created.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write mode must be 'wb' or 'w', got {mode!r}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(p)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        raw = os.fdopen(fd, "wb")
        with raw if mode == "wb" else io.TextIOWrapper(raw, encoding="utf-8") as f:  # type: ignore[arg-type]
            yield f
            f.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if is_enospc(e) and not isinstance(e, DiskFullError):
            raise _disk_full(e, p, "writing", "; its previous complete version is intact") from e
        raise
    fsync_dir(p.parent)


def _disk_full(e: OSError, path: Path, doing: str, state: str = "") -> DiskFullError:
    """The :class:`DiskFullError` of an ENOSPC / EDQUOT ``e`` while ``doing`` ``path``."""
    return DiskFullError(e.errno, f"no space left on the device while {doing} {path} ({e.strerror}){state}: free "
                         "some space and re-run the command", os.fspath(path))


def atomic_write_bytes(path: str | os.PathLike, data: bytes | Callable[[IO[bytes]], None]) -> Path:
    """Write ``data`` (bytes, or a function that writes into the given binary file) atomically to ``path``."""
    with atomic_write(path, "wb") as f:
        if callable(data):
            data(f)
        else:
            f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) atomically to ``path``."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = None) -> Path:
    """Write ``json.dumps(obj, indent=indent)`` atomically to ``path`` (NaN/inf refused: not JSON)."""
    text = json.dumps(obj, indent=indent, allow_nan=False)
    return atomic_write_text(path, text)


def atomic_save_npy(path: str | os.PathLike, arr: np.ndarray) -> Path:
    """``np.save`` ``arr`` atomically to ``path`` (no pickles)."""
    with atomic_write(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)
    return Path(path)


def atomic_save_npz(path: str | os.PathLike, *, compressed: bool = False, **arrays: np.ndarray) -> Path:
    """``np.savez`` (or ``savez_compressed``) the named ``arrays`` atomically to ``path``."""
    with atomic_write(path, "wb") as f:
        (np.savez_compressed if compressed else np.savez)(f, **arrays)
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a hidden temporary name and rename it to ``path`` when the block succeeds.

    An existing ``path`` is replaced as a whole (moved aside, the new one renamed in, the old one deleted);
    on any exception the temporary directory is removed and ``path`` is untouched. Write the files inside
    the yielded folder with the ``atomic_*`` functions or plainly (the folder is only renamed after the
    block, and its files are ``fsync``-ed before).
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead(p.parent.glob(f".{glob_escape(p.name)}.*{TMP_SUFFIX}"))  # leftovers of killed saves of p
    tmp = _tmp_name(p)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        old = None
        if p.exists():
            old = _tmp_name(p)
            os.replace(p, old)
        os.replace(tmp, p)
        fsync_dir(p.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(root: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Delete the temporary files/folders under ``root`` left by killed tusss processes (pid no longer alive).

    Returns the removed paths. Temporaries of running processes are kept.
    """
    r = Path(root)
    if not r.is_dir():
        return []
    return _remove_dead(r.rglob(f".*{TMP_SUFFIX}") if recursive else r.glob(f".*{TMP_SUFFIX}"))


def glob_escape(name: str) -> str:
    """``name`` with the glob metacharacters ``*?[`` escaped."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _remove_dead(paths: Iterator[Path]) -> list[Path]:
    out = []
    for q in list(paths):
        parts = q.name[: -len(TMP_SUFFIX)].rsplit(".", 2)
        try:
            pid = int(parts[-2])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if q.is_dir():
            shutil.rmtree(q, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                q.unlink()
        out.append(q)
    return out


# ---------------------------------------------------------------------------------------------- reading
def _need_file(path: Path, what: str, fix: str) -> None:
    if not path.is_file():
        if path.exists():
            raise corrupt(path, f"{what} is not a file", fix)
        raise corrupt(path, f"{what} is missing", fix)
    if path.stat().st_size == 0:
        raise corrupt(path, f"{what} is empty (0 bytes)", fix)


def read_json(
    path: str | os.PathLike,
    *,
    what: str = "file",
    format: str | None = None,
    version: int | Sequence[int] | None = None,
    format_key: str = "format",
    version_key: str = "version",
    required: Sequence[str] = (),
    fix: str = "delete the file",
) -> Any:
    """Parse a JSON artifact and check its format name, version and required fields.

    Args:
        path: the file.
        what: how to call it in messages ("mask cache manifest", "GLCC metadata" ...).
        format: expected value of ``obj[format_key]`` (None: not checked; then any JSON value is accepted).
        version: expected value(s) of ``obj[version_key]`` (None: not checked).
        required: keys that must be present.
        fix: the suggested fix for every error.

    Raises:
        CorruptFileError: missing, empty, truncated / not JSON, not an object, other format or version,
            missing field. The message names ``path``.
    """
    p = Path(path)
    _need_file(p, what, fix)
    try:
        obj = json.loads(p.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise corrupt(p, f"{what} is not valid JSON (truncated or edited? {_describe(e)})", fix) from e
    except OSError as e:
        raise corrupt(p, f"{what} cannot be read ({_describe(e)})", fix) from e
    if format is None and version is None and not required:
        return obj
    if not isinstance(obj, dict):
        raise corrupt(p, f"{what} is not a JSON object (found {type(obj).__name__})", fix)
    if format is not None and obj.get(format_key) != format:
        raise corrupt(p, f"{what} is not a {format!r} file ({format_key} = {obj.get(format_key)!r})", fix)
    if version is not None:
        ok = (version,) if isinstance(version, int) else tuple(version)
        if obj.get(version_key) not in ok:
            raise corrupt(p, f"{what} has {version_key} {obj.get(version_key)!r}, this tusss reads "
                          f"{' or '.join(map(str, ok))}", fix)
    missing = [k for k in required if k not in obj]
    if missing:
        raise corrupt(p, f"{what} lacks the field(s) {missing}", fix)
    return obj


def _check_array(p: Path, name: str, a: np.ndarray, shape: Sequence[int | None] | None, dtype: Any,
                 finite: bool, fix: str) -> None:
    if shape is not None:
        if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
            want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
            raise corrupt(p, f"{name} has shape {tuple(a.shape)}, expected {want}", fix)
    if dtype is not None:
        kinds = dtype if isinstance(dtype, (tuple, list)) else (dtype,)
        if not any(a.dtype == np.dtype(k) for k in kinds):
            raise corrupt(p, f"{name} has dtype {a.dtype}, expected {' or '.join(str(np.dtype(k)) for k in kinds)}",
                          fix)
    if finite and a.dtype.kind in "fc" and a.size and not np.isfinite(np.asarray(a)).all():
        raise corrupt(p, f"{name} holds NaN or infinite values", fix)


def load_npy(
    path: str | os.PathLike,
    *,
    what: str = "array file",
    shape: Sequence[int | None] | None = None,
    dtype: Any = None,
    finite: bool = False,
    mmap: bool = False,
    fix: str = "delete the file",
) -> np.ndarray:
    """Load a ``.npy`` artifact (no pickles) and check its shape (``None`` = any size), dtype and finiteness.

    With ``mmap`` the array is memory-mapped (its values, and so ``finite``, are checked on access only if
    ``finite`` is False; with ``finite`` the whole array is scanned once).

    Raises:
        CorruptFileError: missing, empty, truncated, not a .npy file, wrong shape/dtype, NaN/inf.
    """
    p = Path(path)
    _need_file(p, what, fix)
    try:
        a = np.load(p, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as e:  # OSError, ValueError (bad header), EOFError, MemoryError (absurd header shape)
        raise corrupt(p, f"{what} is truncated or not a .npy file ({_describe(e)})", fix) from e
    if not isinstance(a, np.ndarray):
        raise corrupt(p, f"{what} is an .npz archive, expected a .npy array", fix)
    _check_array(p, what, a, shape, dtype, finite, fix)
    return a


def load_npz(
    path: str | os.PathLike,
    *,
    what: str = "archive",
    keys: Sequence[str] = (),
    fix: str = "delete the file",
    check: dict[str, dict[str, Any]] | None = None,
) -> dict[str, np.ndarray]:
    """Read every member of an ``.npz`` artifact into memory (no pickles), checking required ``keys``.

    Args:
        check: optional ``{key: {"shape": ..., "dtype": ..., "finite": bool}}`` per member.

    Raises:
        CorruptFileError: missing, empty, truncated / bad CRC, not a zip archive, missing member, bad member.
    """
    p = Path(path)
    _need_file(p, what, fix)
    try:
        with np.load(p, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise corrupt(p, f"{what} is a .npy array, expected an .npz archive", fix)
            out = {k: z[k] for k in z.files}
    except CorruptFileError:
        raise
    except Exception as e:  # BadZipFile, zlib.error (bad deflate data), bad CRC, truncated member, bad header ...
        raise corrupt(p, f"{what} is truncated or not a valid .npz archive ({_describe(e)})", fix) from e
    missing = [k for k in keys if k not in out]
    if missing:
        raise corrupt(p, f"{what} lacks the member(s) {missing}", fix)
    for k, spec in (check or {}).items():
        if k in out:
            _check_array(p, f"{what} member {k!r}", out[k], spec.get("shape"), spec.get("dtype"),
                         bool(spec.get("finite", False)), fix)
    return out


def read_recipe(path: str | os.PathLike, *, fix: str = "fix or delete the recipe file") -> dict[str, Any]:
    """Read a recipe file (``.json``, ``.toml``, or ``.yaml``/``.yml`` when PyYAML is installed) as a dict.

    Raises:
        CorruptFileError: missing, empty, unparsable, or not a mapping at the top level; the message names the
            file and, where the parser says, the line.
    """
    p = Path(path)
    _need_file(p, "recipe", fix)
    suffix = p.suffix.lower()
    try:
        text = p.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise corrupt(p, f"recipe cannot be read as UTF-8 text ({_describe(e)})", fix) from e
    try:
        if suffix == ".toml":
            import tomllib

            obj: Any = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ModuleNotFoundError as e:  # pragma: no cover - depends on the install
                raise corrupt(p, "YAML recipes need PyYAML (pip install pyyaml)", "or write the recipe as JSON") from e
            obj = yaml.safe_load(text)
        else:
            obj = json.loads(text)
    except CorruptFileError:
        raise
    except Exception as e:  # JSONDecodeError, TOMLDecodeError, yaml.YAMLError: all say where
        raise corrupt(p, f"recipe is not valid {suffix.lstrip('.') or 'JSON'} ({_describe(e)})", fix) from e
    if not isinstance(obj, dict):
        raise corrupt(p, f"recipe must be a mapping at the top level, found {type(obj).__name__}", fix)
    return obj


# ---------------------------------------------------------------------------------------------- long commands
class ItemFailedError(TusssError):
    """Raised by :meth:`FailureLog.record` under ``--fail-fast``: the first bad item stops the command."""


class FailureLog:
    """The bad items of one command run, recorded beside its output in ``failures.jsonl``.

    One JSON object per line: ``{"id": str, "reason": str, "command": str}``. The run's first failure
    replaces the previous run's file (atomically); later ones are appended, one ``write`` and ``fsync`` each
    (constant cost per failure, where rewriting the whole file at every record made a run with F failures
    cost O(F²)); :meth:`close` rewrites the file atomically once if an item failed twice. So at every moment
    it lists the failures of the current run: a resumed run that retries an item and succeeds no longer lists
    it; an item that was skipped before and still fails is listed again. A run without failures removes the
    file. A kill in the middle of an append can leave a torn last line, which :meth:`read` ignores.

    Args:
        out_dir: folder of the command's output (the file goes there).
        command: command name recorded with each failure.
        fail_fast: raise :class:`ItemFailedError` at the first failure (after recording it).
    """

    def __init__(self, out_dir: str | os.PathLike, command: str, fail_fast: bool = False) -> None:
        self.path = Path(out_dir) / FAILURES
        self.command = command
        self.fail_fast = fail_fast
        self.failures: dict[str, str] = {}
        self._fh: IO[str] | None = None  # append handle after the run's first record
        self._repeated = False  # an id recorded twice: the appended lines hold a stale reason

    def record(self, item_id: str, reason: BaseException | str) -> None:
        """Record that ``item_id`` was skipped because of ``reason`` (an exception or a message)."""
        msg = one_line(reason) if not isinstance(reason, BaseException) else one_line(reason) or type(reason).__name__
        item_id = str(item_id)
        self._repeated |= item_id in self.failures
        self.failures[item_id] = msg
        self._append(self._line(item_id, msg))
        if self.fail_fast:
            raise ItemFailedError(f"{self.command}: item {item_id!r} failed ({msg}); stopped by --fail-fast "
                                  f"(failures recorded in {self.path})")

    def attempt(self, item_id: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[bool, Any]:
        """Run ``fn(*args, **kwargs)`` for one item: ``(True, result)``, or ``(False, None)`` after recording the
        exception as the item's failure. A full disk (:class:`DiskFullError`), ``--fail-fast`` and
        ``KeyboardInterrupt`` still stop the command."""
        try:
            return True, fn(*args, **kwargs)
        except (DiskFullError, ItemFailedError, MemoryError):
            raise
        except Exception as e:
            if is_enospc(e):
                raise
            self.record(item_id, e if isinstance(e, TusssError) else f"{type(e).__name__}: {one_line(e)}")
            return False, None

    def _line(self, item_id: str, reason: str) -> str:
        return json.dumps({"id": item_id, "reason": reason, "command": self.command}) + "\n"

    def _append(self, line: str) -> None:
        if self._fh is None:  # the run's first failure: the previous run's list goes, atomically
            atomic_write_text(self.path, line)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open until close()
            return
        try:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
        except OSError as e:
            if is_enospc(e):
                raise _disk_full(e, self.path, "appending to") from e
            raise

    def _write(self) -> None:
        atomic_write_text(self.path, "".join(self._line(i, r) for i, r in self.failures.items()))

    def close(self) -> None:
        """Write the final record (or remove a stale one when nothing failed)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self.failures:
            if self._repeated or not self.path.is_file():
                self._write()
        elif self.path.is_file():
            self.path.unlink()

    def __len__(self) -> int:
        return len(self.failures)

    def summary(self) -> str:
        """``"; 2 failed (listed in OUT/failures.jsonl)"`` or ``""``."""
        return f"; {len(self.failures)} failed (listed in {self.path})" if self.failures else ""

    @staticmethod
    def read(path: str | os.PathLike) -> list[dict[str, str]]:
        """The records of a ``failures.jsonl`` (for tests and tools)."""
        p = Path(path)
        if not p.is_file():
            return []
        text = p.read_text()
        lines = text.splitlines()
        out = []
        for n, ln in enumerate(lines, 1):
            if ln.strip():
                try:
                    out.append(json.loads(ln))
                except ValueError as e:
                    if n == len(lines) and not text.endswith("\n"):
                        break  # a torn last append (the run was killed while writing it)
                    raise corrupt(p, f"line {n} is not JSON", "delete the file") from e
        return out


_fault_count = 0


def fault_point(label: str = "") -> None:
    """Count one completed item; SIGKILL this process when the count reaches ``$TUSSS_FAULT_KILL_AFTER``.

    The fault-injection tests set the variable to kill a real command after exactly N committed items (N = 0
    kills it at the first call, which commands place before their first item). Without the variable this
    costs one dictionary lookup.
    """
    global _fault_count
    v = os.environ.get(KILL_ENV)
    if not v:
        return
    if _fault_count >= int(v):
        os.kill(os.getpid(), signal.SIGKILL)
    _fault_count += 1


def is_enospc(e: BaseException) -> bool:
    """True for a 'no space left on device' (or quota exceeded) error."""
    return isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
