from typing import List

from promptflow.core import log_metric, tool


@tool
def metrics(predictions: List[str], labels: List[str]) -> dict:
    """Accuracy, and precision/recall/F1 per class and macro-averaged over the classes in the labels."""
    preds = [p.strip().lower() for p in predictions]
    gold = [g.strip().lower() for g in labels]
    n = len(gold)
    result = {"accuracy": round(sum(p == g for p, g in zip(preds, gold)) / n, 4) if n else 0.0}
    f1s = []
    for cls in sorted(set(gold)):
        tp = sum(p == cls and g == cls for p, g in zip(preds, gold))
        predicted = sum(p == cls for p in preds)
        actual = sum(g == cls for g in gold)
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        f1s.append(f1)
        result[f"precision.{cls}"] = round(precision, 4)
        result[f"recall.{cls}"] = round(recall, 4)
    result["macro_f1"] = round(sum(f1s) / len(f1s), 4) if f1s else 0.0
    for k, v in result.items():
        log_metric(k, v)
    return result
