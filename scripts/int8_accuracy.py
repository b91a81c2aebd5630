"""Int8 accuracy of the 50%-pruned, distilled reference with and without the int8 repairs.

Builds the study's pruning reference the way a trial does (``prune.ratio=0.5``, magnitude,
per layer; recovery fine-tune of ``--epochs`` epochs distilled from the baseline at T=4,
alpha=0.9, as ``search.core.space.reference_trials`` combines them), caches the fine-tuned
model, then deploys it through the quantization lever's own code (``before_export``, export,
``apply``) in each combination of per-channel/per-tensor and equalization + bias
correction off/on, and prints the validation accuracy of every file in ONNX Runtime next
to the fp32 file's, and its latency with the search's own protocol (warm-up, repeats,
median and p95 of one-image calls, one thread; search.measure.latency), the files one after
another: run it on an otherwise idle machine, as a shared one would mislead.

    python scripts/int8_accuracy.py [--model digits|library] [--cache DIR] [--epochs 10]

``--model library`` runs the same on the library-style MobileNetV2 of the tests
(tests/fixtures/library_models.py) trained 30 epochs on the built-in digits at 16x16
(``--image-size`` for another).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import optuna
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from search.core.space import baseline_params, replay_plan, trained_model_key  # noqa: E402
from search.measure.artifact import INPUT_NAME  # noqa: E402
from search.measure.latency import LatencyStats, measure_latency  # noqa: E402
from search.measure.onnx_runtime import compact_names  # noqa: E402
from search.measure.runtimes import evaluate, export  # noqa: E402
from search.tasks.digits import DigitsConfig, DigitsTask  # noqa: E402
from search.train.loop import Recipe, fit  # noqa: E402
from techniques import TECHNIQUES, Context  # noqa: E402

REFERENCE = {
    "prune.ratio": 0.5,
    "prune.importance": "magnitude",
    "prune.scope": "layer",
    "distill.alpha": 0.9,
    "distill.temperature": 4.0,
    "distill.feature_weight": 0.0,
    "lora.rank": 0,
}
INT8 = {
    "quant.scheme": "int8-static",
    "quant.activation_type": "uint8",
    "quant.calibration": "minmax",
    "quant.reduce_range": True,
    "quant.fp_layers": 0,
}


class LibraryDigits(DigitsTask):
    """The built-in digits at 16x16 with the library-style MobileNetV2 of the tests."""

    def __init__(self, cache_dir: Path, epochs: int, image_size: int = 16) -> None:
        config = DigitsConfig(image_size=image_size, epochs=epochs)
        super().__init__(config, cache_dir=cache_dir)
        self.name = f"digits{image_size}-library-mbv2"

    def build_model(self) -> torch.nn.Module:
        sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
        from library_models import library_mobilenet_v2

        model = library_mobilenet_v2()
        if not self.baseline_path.exists():
            torch.manual_seed(self.config.seed)
            fit(model, self.data("train"), epochs=self.config.epochs, lr=self.config.lr,
                loss_fn=self.loss)  # fmt: skip
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), self.baseline_path)
        model.load_state_dict(torch.load(self.baseline_path, weights_only=True))
        return model.eval()


def reference_model(task: DigitsTask, ctx: Context, epochs: int, cache: Path) -> torch.nn.Module:
    """The pruned, distilled, fine-tuned reference (cached: fine-tuning takes minutes)."""
    path = cache / f"{task.name}-prune0.5-kd-{epochs}ep.pt"
    if path.exists():
        return torch.load(path, weights_only=False).eval()
    params = {**baseline_params(ctx), **REFERENCE}
    plan = replay_plan(params, ctx)
    key = trained_model_key(params, plan)
    torch.manual_seed(zlib.crc32(key.encode()))
    model = TECHNIQUES["prune"].apply(ctx.base_model, plan["prune"], ctx)  # type: ignore[call-arg]
    recipe = Recipe(epochs=epochs, lr=0.05)
    recipe = TECHNIQUES["distill"].configure(recipe, plan["distill"], ctx)  # type: ignore[union-attr]
    fit(model, task.data("train"), epochs=epochs, lr=recipe.lr, loss_fn=task.loss,
        distillation=recipe.distillation)  # fmt: skip
    torch.save(model, path)
    return model.eval()


def deployed(
    model: torch.nn.Module, params: dict[str, Any], ctx: Context
) -> tuple[float, np.ndarray, LatencyStats]:
    """Validation accuracy, logits and latency of the file a trial with these params would
    deploy."""
    technique: Any = TECHNIQUES["quant"]
    quant = technique.space(optuna.trial.FixedTrial(params), ctx)
    with tempfile.TemporaryDirectory() as folder:
        if quant is not None:
            model = technique.before_export(copy.deepcopy(model), quant, ctx)
        artifact = export("onnxruntime", model, ctx.task.example_inputs(1), Path(folder) / "m")
        if quant is not None:
            artifact = technique.apply(artifact, quant, ctx)
        artifact = compact_names(artifact)
        session = ort.InferenceSession(str(artifact.path), providers=["CPUExecutionProvider"])
        logits = np.concatenate(
            [session.run(None, {INPUT_NAME: x.numpy()})[0] for x, _ in ctx.task.data("val")]
        )
        latency = measure_latency(artifact, ctx.task.example_inputs(1).numpy(), threads=1)
        return evaluate(artifact, ctx.task.data("val"), ctx.task.metric), logits, latency


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("digits", "library"), default="digits")
    parser.add_argument("--cache", type=Path, default=Path("studies/cache"))
    parser.add_argument("--epochs", type=int, default=10, help="recovery fine-tune epochs")
    parser.add_argument("--image-size", type=int, default=16, help="library model's input")
    args = parser.parse_args()
    if args.model == "digits":
        task: DigitsTask = DigitsTask(cache_dir=args.cache)
    else:
        task = LibraryDigits(args.cache, epochs=30, image_size=args.image_size)
    base = task.build_model()
    with tempfile.TemporaryDirectory() as workdir:
        ctx = Context(task=task, device="cpu", workdir=Path(workdir), base_model=base)
        model = reference_model(task, ctx, args.epochs, args.cache)
        accuracy, reference, latency = deployed(model, {"quant.scheme": "fp32"}, ctx)
        rows = [("fp32", "-", accuracy, 0.0, 1.0, latency)]
        repairs = {"off": (False, False), "equalize": (True, False),
                   "bias correction": (False, True), "both": (True, True)}  # fmt: skip
        for per_channel in (True, False):
            for repair, (equalize, bias_correction) in repairs.items():
                params = {
                    **INT8,
                    "quant.per_channel": per_channel,
                    "quant.equalize": equalize,
                    "quant.bias_correction": bias_correction,
                }
                granularity = "per-channel" if per_channel else "per-tensor"
                accuracy, logits, latency = deployed(model, params, ctx)
                error = float(np.abs(logits - reference).mean())
                agree = float((logits.argmax(1) == reference.argmax(1)).mean())
                rows.append(
                    (f"int8 static {granularity}", repair, accuracy, error, agree, latency)
                )
    print(f"| {task.name} 50%-pruned reference | repair | val accuracy "
          "| mean abs logit error vs fp32 | top-1 agreement with fp32 "
          "| p50 ms | p95 ms |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name, repair, accuracy, error, agree, latency in rows:
        print(
            f"| {name} | {repair} | {accuracy:.4f} | {error:.4f} | {agree:.4f} "
            f"| {latency.p50_ms:.4f} | {latency.p95_ms:.4f} |"
        )


if __name__ == "__main__":
    main()
