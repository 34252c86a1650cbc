"""High availability: a group of brokers that acts as one (``titan broker --peers``).

* ``election``: who leads, from pysyncobj's Raft (timeouts, votes, quorum, step-down).
* ``grants``: the fencing epoch a majority has promised to a leader, kept on disk, and the
  history of where each epoch's journal began (what a rejoining member compares to cut
  what it wrote alone).
* ``mirror``: a data directory seen as one byte stream of positions ``(generation, offset)``,
  read by a leader and written by a follower, byte for byte the same files.
* ``stream``: the journal shipped over ZeroMQ, leader to followers, and their acknowledgements.
* ``member``: one member's life: follow, stand, catch up, lead, step down.
"""
