"""featdb: a storage engine for feature tables larger than memory.

Public API: :func:`open`, :func:`create`, :class:`Store` and the errors in
:mod:`featdb.errors`.
"""

from . import errors
from .errors import FeatDBError
from .store import Store, create, open

__all__ = ["FeatDBError", "Store", "create", "errors", "open"]
__version__ = "0.1.0"
