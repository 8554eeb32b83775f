"""featdb on DGL's distributed engine (docs/distributed.md).

- :mod:`.manifest`: which featdb store serves which KVStore key on which partition (plain data);
- :mod:`.partition`: ``featdb partition`` — DGL's partitioner, one featdb store per partition;
- :mod:`.dglhooks`: the server entry point and the client hook (DGL internals, version-pinned);
- :mod:`.launch`: DGL's launch environment contract, one machine's processes, ssh;
- :mod:`.netns`, :mod:`.simulate`: N simulated machines on one box (network namespaces).

Importing this package needs neither torch nor DGL; the functions that need them import them.
"""

from .dglhooks import PINNED_DGL, check_dgl, client_machine_id, install_hook, map_rows
from .manifest import MANIFEST_NAME, FeatureKey, Manifest, kv_name, load_manifest, write_table_chunks
from .partition import partition

__all__ = [
    "MANIFEST_NAME",
    "PINNED_DGL",
    "FeatureKey",
    "Manifest",
    "check_dgl",
    "client_machine_id",
    "install_hook",
    "kv_name",
    "load_manifest",
    "map_rows",
    "partition",
    "write_table_chunks",
]
