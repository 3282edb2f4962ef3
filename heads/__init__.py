"""Medusa heads: the module, self-distilled training data, and the training loop."""
from ..runtime.drafters.medusa_heads import MedusaConfig, MedusaHeads

__all__ = ["MedusaConfig", "MedusaHeads", "TrainConfig", "TrainResult", "train_heads", "load_builtin_prompts",
           "load_prompt_file", "load_data_file", "self_distill", "Example", "HeadsError"]


def __getattr__(name):  # the trainer pulls in accelerate: import it only when asked for
    if name in ("TrainConfig", "TrainResult", "train_heads"):
        from . import train

        return getattr(train, name)
    if name in ("load_builtin_prompts", "load_prompt_file", "load_data_file", "self_distill", "Example", "HeadsError"):
        from . import data

        return getattr(data, name)
    raise AttributeError(name)
