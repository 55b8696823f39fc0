"""`unet-ssl bench`: throughput, bf16 numerics and stage memory of the pipeline's own steps (run.py orders it)."""
