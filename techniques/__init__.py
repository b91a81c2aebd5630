"""The compression techniques, in the order a trial applies them.

TECHNIQUES is the one registry: insertion order is application order. Stages run in the
order of STAGES (model -> training -> artifact) and the registry lists them in that order. Adding a
technique is one new module and one line here.
"""

from techniques.base import (
    STAGES,
    ArtifactTechnique,
    Context,
    ModelTechnique,
    Technique,
    TechniqueError,
    TrainingTechnique,
)
from techniques.distillation import KnowledgeDistillation
from techniques.lora import LoRA
from techniques.lowrank import LowRank
from techniques.pruning import StructuredPruning
from techniques.quantization import Quantization
from techniques.sparsity import UnstructuredPruning
from techniques.weight_sharing import WeightSharing
from techniques.width import ExpandRatio

TECHNIQUES: dict[str, Technique] = {
    "width": ExpandRatio(),  # model stage: narrow inverted residual blocks first,
    "prune": StructuredPruning(),  # then prune what remains,
    "lowrank": LowRank(),  # then factorise the remaining 1x1 and Linear layers,
    "sparse": UnstructuredPruning(),  # zero single weights (only when asked for)
    "distill": KnowledgeDistillation(),  # training stage
    "lora": LoRA(),
    "quant": Quantization(),  # artifact stage
    "share": WeightSharing(),  # (only when asked for, and not with int8)
}

__all__ = [
    "STAGES",
    "TECHNIQUES",
    "ArtifactTechnique",
    "Context",
    "ModelTechnique",
    "Technique",
    "TechniqueError",
    "TrainingTechnique",
]
