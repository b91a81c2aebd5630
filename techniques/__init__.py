"""The compression techniques, in the order a trial applies them.

TECHNIQUES is the one registry: insertion order is application order. Stages run in the
order of STAGES (model -> training -> artifact) and the registry lists them in that order. Adding a
technique is one new module and one line here.
"""

from techniques.attention import AttentionKernel
from techniques.base import (
    STAGES,
    ArtifactTechnique,
    Context,
    ModelTechnique,
    Technique,
    TechniqueError,
    TrainingTechnique,
)
from techniques.depth import ElasticDepth
from techniques.distillation import KnowledgeDistillation
from techniques.finetune_lr import FinetuneLR
from techniques.lora import LoRA
from techniques.lowrank import LowRank
from techniques.pruning import StructuredPruning
from techniques.quantization import Quantization
from techniques.resolution import InputResolution
from techniques.session import SessionKnobs
from techniques.sparsity import UnstructuredPruning
from techniques.weight_sharing import WeightSharing
from techniques.width import ExpandRatio

TECHNIQUES: dict[str, Technique] = {
    "attn": AttentionKernel(),  # model stage: swap the attention kernel (transformers),
    "depth": ElasticDepth(),  # drop residual blocks (the others then act on those left),
    "width": ExpandRatio(),  # narrow inverted residual blocks,
    "prune": StructuredPruning(),  # then prune what remains,
    "lowrank": LowRank(),  # then factorise the remaining 1x1 and Linear layers,
    "sparse": UnstructuredPruning(),  # zero single weights (only when asked for),
    "resolution": InputResolution(),  # last: shrink the input in front of the finished model
    "distill": KnowledgeDistillation(),  # training stage
    "lora": LoRA(),
    "ft": FinetuneLR(),  # the fine-tune's learning rate (only when asked for)
    "quant": Quantization(),  # artifact stage
    "share": WeightSharing(),  # (only when asked for, and not with int8)
    "ort": SessionKnobs(),  # then how ONNX Runtime runs the file (optimised offline, threads)
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
