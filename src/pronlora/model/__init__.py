"""Phi-4-multimodal loading, adapters and random-weight checkpoints."""
