"""HTTP routes, one module per resource; each exposes ``router``. ``server.app`` includes them."""
