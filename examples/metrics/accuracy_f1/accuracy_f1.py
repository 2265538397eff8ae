"""Accuracy and F1 as an `evaluate` metric module that loads offline: `evaluate.load("<this folder>")`.

Written for the examples because `evaluate.load("accuracy")` fetches its script from the Hub.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = "Accuracy (fraction of correct predictions) and F1 (binary for two classes, else macro-averaged)."
_KWARGS = """
Args:
    predictions: predicted label ids.
    references: true label ids.
    average: "binary" (F1 of `pos_label`), "macro" (mean F1 over classes) or None (binary for 2 classes, else macro).
    pos_label: the positive class for binary F1 (default 1).
Returns:
    accuracy, f1
"""


class AccuracyF1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average=None, pos_label=1):
        pred, ref = np.asarray(predictions), np.asarray(references)
        classes = np.union1d(pred, ref)
        if average is None:
            average = "binary" if len(classes) <= 2 else "macro"

        def f1(label) -> float:
            tp = np.sum((pred == label) & (ref == label))
            false_pos_and_neg = np.sum((pred == label) != (ref == label))
            denominator = 2 * tp + false_pos_and_neg
            return float(2 * tp / denominator) if denominator > 0 else 0.0

        score = f1(pos_label) if average == "binary" else float(np.mean([f1(c) for c in classes]))
        return {"accuracy": float(np.mean(pred == ref)) if len(ref) else 0.0, "f1": score}
