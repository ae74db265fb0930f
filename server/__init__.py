"""vpetl cloud service: FastAPI app, predictor + micro-batcher, Ray Serve app, settings and the ``vpetl`` CLI."""
