"""Datasets: readers for the folder / HMDB51 / Something-Something v2 layouts (``readers``), the synthetic action
video generator (``synth``, ``render``) and the torch data loader (``loader``, the only module here importing torch).

Nothing is imported here so that ``import vpetl.data.readers`` stays torch-free and cheap.
"""
