"""Replacing layers of a model in place: the one walk that wrapping and unwrapping share.

LoRA wraps layers in adapters and merges them back; QAT wraps layers (LoRA layers
included) in fake quantization and snaps them back. Each is ``replace_modules`` with a
different rule, so "do not descend into what was just wrapped" is decided once.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

# (qualified name, module) -> a replacement; the module itself to keep it and skip its
# insides; or None to leave it and look inside.
Rule = Callable[[str, nn.Module], nn.Module | None]


def replace_modules(model: nn.Module, rule: Rule) -> nn.Module:
    """Apply ``rule`` to every submodule of ``model``, outermost first, in place.

    A module the rule answers for (replaced or kept) is not descended into: a wrapper's
    wrapped layer is not wrapped again, a merged layer's old parts are not visited.
    """
    claimed: list[str] = []
    for name, module in list(model.named_modules()):
        if not name or any(name.startswith(f"{outer}.") for outer in claimed):
            continue
        replacement = rule(name, module)
        if replacement is None:
            continue
        claimed.append(name)
        if replacement is not module:
            model.set_submodule(name, replacement)
    return model
