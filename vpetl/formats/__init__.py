"""Converters between vpetl and other formats — the one place to look for import/export.

What lives here:

- ``vpetl.formats.keymaps``: one key-mapping table per backbone (vpetl parameter names ↔ an upstream
  checkpoint's names), shared by the checkpoint readers in ``vpetl.backbones.checkpoint`` and the exporters below.
- ``vpetl.formats.hf``: a VideoMAE backbone ↔ a Hugging Face ``transformers`` model directory
  (``config.json`` + ``model.safetensors``).
- ``vpetl.formats.peft``: a vpetl LoRA adapter ↔ a ``peft`` LoRA adapter directory
  (``adapter_config.json`` + ``adapter_model.safetensors``).
- ``vpetl.formats.onnx``: the backbone as one ONNX graph with adapter weights as graph inputs (the edge graph;
  moved here from ``training/onnx_export.py``).
- ``vpetl.formats.onnx_quant``: its dynamic int8 variant (onnxruntime's quantizer) and a variant's top-1 agreement
  with the fp32 graph; ``vpetl.formats.onnx_merge``: a single-task graph with one adapter merged into constants.

Importing this package is torch-free; each submodule imports torch only where it converts tensors.
"""
