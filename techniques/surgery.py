"""Changing a model's layers: the one walk that wrapping and unwrapping share, and the
one decision whether a lever changes a copy or the model it was given.

LoRA wraps layers in adapters and merges them back; QAT wraps layers (LoRA layers
included) in fake quantization and snaps them back. Each is ``replace_modules`` with a
different rule, so "do not descend into what was just wrapped" is decided once.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn

# (qualified name, module) -> a replacement; the module itself to keep it and skip its
# insides; or None to leave it and look inside.
Rule = Callable[[str, nn.Module], nn.Module | None]


def working_copy(model: nn.Module, *, in_place: bool) -> nn.Module:
    """``model`` itself where the caller owns it (``Context.owns_model``), else a copy.

    A trial's model levers run in a chain, each on the previous one's output. Only the
    first receives the user's model, which must stay as it is; the others receive a
    model no one else holds, and a deep copy of it (several per trial, most of what the
    levers cost on a small network) would only be thrown away. It would also drop what
    does not survive a copy, such as the gradient hooks that keep pruned weights at zero.
    """
    return model if in_place else copy.deepcopy(model)


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
