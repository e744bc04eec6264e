"""The language model, its checkpoints, LoRA/QTHA adapters, training and evaluation. May import quantum/."""
