"""The data plane: objects kept where they were made and moved holder to holder.

- :mod:`codec`: the byte layout of an object (pickle protocol 5 with out-of-band buffers, raw
  bytes, files, folders) and :class:`ObjectRef`, the reference that names one;
- :mod:`store`: a holder's store (memory and a spill folder, a size limit, LRU eviction);
- :mod:`transfer`: the chunk protocol, the server each holder runs and the fetcher;
- :mod:`relay`: the broker's relay for peers that cannot reach each other.

This package imports nothing of the broker, the worker or the client; each of them uses it.
"""

from titan_zmq.objects.codec import REF_KEY, ObjectRef, as_ref, is_ref, refs_in

__all__ = ["REF_KEY", "ObjectRef", "as_ref", "is_ref", "refs_in"]
