"""vpetl edge client: HTTP SDK, onnxruntime runner, adapter cache and the ``vpetl-edge`` CLI. Never imports torch."""
