"""featdb behind other libraries' feature interfaces.

- :mod:`featdb.adapters.graphbolt`: :class:`FeatDBFeature`, a DGL GraphBolt ``Feature`` (DGL 2.1.0).
- :mod:`featdb.adapters.pyg`: :class:`FeatDBFeatureStore` and :class:`FeatDBGraphStore`, PyTorch
  Geometric's ``FeatureStore`` and ``GraphStore`` (the ``pyg`` extra).

Both name a table the same way: GraphBolt's ``("node", T, N)`` and PyG's
``TensorAttr(group_name=T, attr_name=N)`` are the table ``node/T/N``, and ``_``
is the type of a homogeneous graph (PyG's ``group_name=None``). Each module
imports its library (and torch) when it is imported; ``import featdb`` and this
package need neither.
"""

from .common import HOMOGENEOUS, table_key, type_of

__all__ = ["HOMOGENEOUS", "table_key", "type_of"]
