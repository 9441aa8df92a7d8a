"""Extra command-line tools, each a typed function run as ``evf <tool>`` (table: `evf.cli.TOOLS`).

* `describe`: parameter counts per part of the model a config builds (``evf describe``).
* `annotate_objects365`: SAM masks for Objects365 boxes, sharded and resumable
  (``evf annotate-objects365``).
* `cache_embeddings`: the frozen SAM image encoder's features of every image a training config
  uses, into a sharded on-disk store (``evf cache-embeddings --config FILE``; an `EVFCLI` subclass).
"""
