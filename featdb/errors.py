"""The featdb exception tree.

Every error featdb raises on purpose derives from :class:`FeatDBError`; leaves
also inherit the builtin a caller would naturally catch::

    FeatDBError
    ├── StoreNotFoundError        (FileNotFoundError)
    ├── StoreExistsError          (FileExistsError)
    ├── ReadOnlyError             (PermissionError)
    ├── FormatVersionError        (ValueError)   store written by a newer featdb
    ├── CatalogError              (OSError)      LMDB failed underneath
    ├── StorageError              (OSError)      the OS refused a read or write of the store's files
    │   └── DiskFullError         no space (or quota) left on the device
    ├── NotFoundError             (KeyError)
    │   ├── TableNotFoundError
    │   ├── GraphNotFoundError
    │   ├── SampleSetNotFoundError
    │   ├── TraceNotFoundError
    │   └── LayoutNotFoundError
    ├── AlreadyExistsError        (ValueError)   a name clash
    ├── InvalidInputError         (ValueError)   bad argument or source file
    │   ├── InvalidKeyError
    │   ├── InvalidIdsError       (also TypeError) ids not a 1-D integer array
    │   ├── SchemaMismatchError   dtype/shape disagree with the table
    │   └── ConfigError           a tier/plan/budget combination that cannot work
    │       ├── BudgetExceededError   the parts a command must hold exceed --memory-budget
    │       └── StaleDataError        derived data (a sample set) built on a graph since replaced
    ├── IdsOutOfRangeError        (IndexError)   negative or >= rows
    ├── CorruptDataError          (OSError)      checksum or header mismatch
    │   └── CorruptCatalogError   a catalog entry fails its checksum or schema
    ├── GenerationPinnedError     (RuntimeError) gc of a generation a reader holds
    ├── BusyError                 (BlockingIOError) another process is writing that named object
    └── ResourceExhaustedError    (RuntimeError) buffer pool or budget exhausted
"""

from __future__ import annotations


class FeatDBError(Exception):
    """Root of every error featdb raises on purpose."""


class StoreNotFoundError(FeatDBError, FileNotFoundError):
    """The path holds no featdb store."""


class StoreExistsError(FeatDBError, FileExistsError):
    """`create` was asked to make a store where one (or other data) already is."""


class ReadOnlyError(FeatDBError, PermissionError):
    """A write was attempted on a store opened with mode='r'."""


class FormatVersionError(FeatDBError, ValueError):
    """The store or file was written by a newer, incompatible featdb."""


class CatalogError(FeatDBError, OSError):
    """The LMDB catalog failed; the original error is chained."""


class StorageError(FeatDBError, OSError):
    """The operating system refused a read or write (permissions, I/O error, ...); the cause is chained."""


class DiskFullError(StorageError):
    """No space (or quota) left on the device being written; nothing half-written is kept."""


def os_error(exc: OSError, doing: str) -> StorageError:
    """``exc`` as one readable :class:`StorageError` saying what was being done and what ran out."""
    import errno

    if isinstance(exc, StorageError):
        return exc
    what = exc.strerror or str(exc)
    where = f" ({exc.filename})" if exc.filename and str(exc.filename) not in doing else ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return DiskFullError(f"disk full while {doing}{where}: {what}; free some space and run it again")
    code = errno.errorcode.get(exc.errno or 0)
    return StorageError(f"{what} while {doing}{where}" + (f" ({code})" if code else ""))


class NotFoundError(FeatDBError, KeyError):
    """A named object is not in the store."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


class TableNotFoundError(NotFoundError):
    """No table with that key."""


class GraphNotFoundError(NotFoundError):
    """The store holds no graph (run ingest-graph, ingest-ogb or synth)."""


class SampleSetNotFoundError(NotFoundError):
    """No sample set with that name."""


class TraceNotFoundError(NotFoundError):
    """No trace with that name."""


class LayoutNotFoundError(NotFoundError):
    """No packed generation is current (run `featdb pack`)."""


class AlreadyExistsError(FeatDBError, ValueError):
    """A table, sample set or other name is already taken."""


class InvalidInputError(FeatDBError, ValueError):
    """An argument or a source file is malformed."""


class InvalidKeyError(InvalidInputError):
    """A table key is not of the form domain/type/name."""


class InvalidIdsError(InvalidInputError, TypeError):
    """Row ids must be a 1-D array of integers."""


class SchemaMismatchError(InvalidInputError):
    """A dtype or shape disagrees with what the table or option declares."""


class ConfigError(InvalidInputError):
    """A configuration that cannot work (tier too small, wrong sample set, ...)."""


class BudgetExceededError(ConfigError):
    """What a command must hold does not fit its memory budget; the message names the parts."""


class StaleDataError(ConfigError):
    """A sample set (or other derived data) was built on a graph or table that has since been replaced;
    the message gives the command that rebuilds it."""


class IdsOutOfRangeError(FeatDBError, IndexError):
    """A row id is negative or not below the table's row count."""


class CorruptDataError(FeatDBError, OSError):
    """Bytes on disk do not match their recorded checksum or header."""


class CorruptCatalogError(CorruptDataError):
    """A catalog entry fails its checksum or its schema; the message names its key."""


class GenerationPinnedError(FeatDBError, RuntimeError):
    """A generation cannot be removed while a reader holds it."""


class BusyError(FeatDBError, BlockingIOError):
    """Another process holds the writer lock of that sample set (or other named object)."""


class ResourceExhaustedError(FeatDBError, RuntimeError):
    """A bounded resource (buffer pool, memory budget) ran out."""


__all__ = [
    "AlreadyExistsError",
    "BudgetExceededError",
    "BusyError",
    "CatalogError",
    "ConfigError",
    "CorruptCatalogError",
    "CorruptDataError",
    "DiskFullError",
    "FeatDBError",
    "FormatVersionError",
    "GenerationPinnedError",
    "GraphNotFoundError",
    "IdsOutOfRangeError",
    "InvalidIdsError",
    "InvalidInputError",
    "InvalidKeyError",
    "LayoutNotFoundError",
    "NotFoundError",
    "ReadOnlyError",
    "ResourceExhaustedError",
    "SampleSetNotFoundError",
    "SchemaMismatchError",
    "StaleDataError",
    "StorageError",
    "StoreExistsError",
    "StoreNotFoundError",
    "TableNotFoundError",
    "TraceNotFoundError",
]
