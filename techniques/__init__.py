"""The compression techniques, in the order a trial applies them.

TECHNIQUES is the one registry: insertion order is application order within each stage
(model-stage techniques before export, artifact-stage techniques after). Adding a
technique is one new module and one line here.
"""

from techniques.base import ArtifactTechnique, Context, ModelTechnique, Technique, TechniqueError
from techniques.pruning import StructuredPruning
from techniques.quantization import Quantization

TECHNIQUES: dict[str, Technique] = {
    "prune": StructuredPruning(),
    "quant": Quantization(),
}

__all__ = [
    "TECHNIQUES",
    "ArtifactTechnique",
    "Context",
    "ModelTechnique",
    "Technique",
    "TechniqueError",
]
