"""Runtime: model loading, the acceleration pack, prompt files, and the generation engines."""

from .errors import AccelError, ModelError, PackError, PromptError
from .models import DEFAULT_MODEL, LoadedModel, load_model, model_fingerprint
from .pack import Pack, load_pack, save_pack

__all__ = ["AccelError", "ModelError", "PackError", "PromptError", "DEFAULT_MODEL", "LoadedModel",
           "load_model", "model_fingerprint", "Pack", "load_pack", "save_pack"]
