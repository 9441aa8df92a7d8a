"""Extra command-line tools, each a typed function run as ``evf <tool>`` (table: `evf.cli.TOOLS`).

* `describe`: parameter counts per part of the model a config builds (``evf describe``).
* `annotate_objects365`: SAM masks for Objects365 boxes, sharded and resumable
  (``evf annotate-objects365``).
"""
