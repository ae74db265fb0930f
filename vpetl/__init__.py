"""vpetl — one frozen video transformer, many parameter-efficient task adapters.

The top-level package is torch-free: importing it (or ``vpetl.errors``, ``vpetl.protocol``, ``vpetl.video``,
``vpetl.artifact``) never imports torch, so the edge client can use the same code.
"""

__version__ = "0.1.0"
