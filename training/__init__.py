"""Adapter training: trainer, demo-backbone pretraining, experiments, job worker, ONNX export."""
