"""Parameter-efficient methods on a frozen backbone: one module per method, the registry, the trainable model,
and (``functional``) the adapter terms shared by training and the mixed-task engine."""

from vpetl.petl.adaptmlp import AdaptMlpConfig
from vpetl.petl.bapat import BapatConfig
from vpetl.petl.base import Method, MethodAdapter, MethodConfig
from vpetl.petl.bitfit import BitfitConfig
from vpetl.petl.dualpath import DualPathConfig
from vpetl.petl.full import FullConfig
from vpetl.petl.linear import LinearConfig
from vpetl.petl.lora import LoraConfig
from vpetl.petl.model import PetlModel, as_method_config, create_model
from vpetl.petl.patt import PattConfig
from vpetl.petl.prefix import PrefixConfig, PrefixPlainConfig
from vpetl.petl.registry import get_method, list_methods, make_config, method_config_from_dict, register_method
from vpetl.petl.st_adapter import StAdapterConfig
from vpetl.petl.vpt import VptConfig

__all__ = [
    "AdaptMlpConfig",
    "BapatConfig",
    "BitfitConfig",
    "DualPathConfig",
    "FullConfig",
    "LinearConfig",
    "LoraConfig",
    "Method",
    "MethodAdapter",
    "MethodConfig",
    "PattConfig",
    "PetlModel",
    "PrefixConfig",
    "PrefixPlainConfig",
    "StAdapterConfig",
    "VptConfig",
    "as_method_config",
    "create_model",
    "get_method",
    "list_methods",
    "make_config",
    "method_config_from_dict",
    "register_method",
]
