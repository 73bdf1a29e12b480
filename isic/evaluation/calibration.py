"""Are the Task 3 probabilities what they say? Temperature scaling, expected calibration error and
reliability diagrams (Guo et al. 2017, "On Calibration of Modern Neural Networks").

The official scorer reports AUC and AP per class, which depend on the probabilities, and a
network trained on imbalanced classes is typically over-confident. Temperature scaling divides
the logits by one number T > 0 fitted to minimise the negative log-likelihood on held-out images:
it never changes an image's argmax (so balanced accuracy stays), only how sure the row is.

Rows here are the 7-class Task 3 rows (isic.outputs.deliverables.task3_row); their logarithms are
logits up to a constant per row, which softmax ignores, so softmax(log(p) / T) is temperature
scaling of the rows themselves. Fitting and applying on the same rows keeps the export, predict
and investigate consistent.

A run stores its T in `calibration.json` beside its checkpoints (`write_run_calibration`,
fitted on the run's own validation split); `run_temperature` reads it back for a weights file.
"""
import json
import logging
import pathlib

import numpy as np
from scipy import optimize

from isic import layout
from mrcnn.io import atomic

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
RELIABILITY_FIGURE = "reliability_diagram.png"
DEFAULT_BINS = 15  # Guo et al.'s M = 15 equal-width confidence bins
LOG_T_BOUNDS = (-4.0, 4.0)  # T in [0.018, 54.6]
_EPS = 1e-12


def _labels(labels, num_classes):
    """Integer labels [N] from labels [N] or one-hot rows [N, C]."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        if labels.shape[1] != num_classes:
            raise ValueError(f"one-hot labels have {labels.shape[1]} columns, probabilities {num_classes}")
        return labels.argmax(axis=1)
    return labels.astype(np.int64)


def _logits(values, from_probabilities):
    values = np.asarray(values, dtype=np.float64)
    return np.log(np.clip(values, _EPS, None)) if from_probabilities else values


def softmax(logits):
    """Row-wise softmax of [N, C] (shifted by the row maximum)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def negative_log_likelihood(logits, labels, temperature):
    """Mean NLL of softmax(logits / T) at the true classes. logits [N, C], labels [N]."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=1))
    return float(np.mean(log_norm - z[np.arange(len(z)), labels]))


def fit_temperature(values, labels, from_probabilities=True):
    """The T > 0 that minimises the NLL of softmax(logits / T) on (values, labels).

    values: [N, C] probabilities (from_probabilities) or logits; labels: [N] ints or [N, C]
    one-hot. Searched over log T in LOG_T_BOUNDS (bounded Brent), which keeps T positive and
    treats halving and doubling alike. Returns 1.0 for an empty set.
    """
    logits = _logits(values, from_probabilities)  # [N, C]
    labels = _labels(labels, logits.shape[1])
    if len(logits) == 0:
        return 1.0
    found = optimize.minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, np.exp(log_t)),
                                     bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    return float(np.exp(found.x))


def apply_temperature(values, temperature, from_probabilities=True):
    """softmax(logits / T) of [N, C] (or [C]) probabilities or logits."""
    logits = _logits(values, from_probabilities)
    return softmax(logits / float(temperature))


def reliability(probabilities, labels, bins=DEFAULT_BINS):
    """Reliability-diagram data: per equal-width confidence bin (confidence = the row's largest
    probability; bin k holds confidences in (k/bins, (k+1)/bins], the first bin includes 0),
    its image count, mean confidence and accuracy (argmax == label; None when empty)."""
    probabilities = np.asarray(probabilities, np.float64)  # [N, C]
    labels = _labels(labels, probabilities.shape[1])
    confidence = probabilities.max(axis=1)  # [N]
    correct = probabilities.argmax(axis=1) == labels  # [N]
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)  # [N]
    counts, confidences, accuracies = [], [], []
    for k in range(bins):
        inside = index == k
        counts.append(int(inside.sum()))
        confidences.append(float(confidence[inside].mean()) if inside.any() else None)
        accuracies.append(float(correct[inside].mean()) if inside.any() else None)
    return {"bin_edges": edges.tolist(), "counts": counts, "mean_confidence": confidences,
            "accuracy": accuracies}


def expected_calibration_error(probabilities, labels, bins=DEFAULT_BINS):
    """ECE = sum over equal-width confidence bins of (n_bin / N) * |accuracy - mean confidence|
    (Naeini et al. 2015, as in Guo et al. 2017); 0 for an empty set."""
    data = reliability(probabilities, labels, bins)
    total = sum(data["counts"])
    if total == 0:
        return 0.0
    return float(sum(n / total * abs(a - c) for n, a, c in
                     zip(data["counts"], data["accuracy"], data["mean_confidence"]) if n))


def per_class_recall(probabilities, labels, class_names=layout.DIAGNOSES):
    """{class: recall of the argmax labels, None for a class with no image}. Ties go to the
    first maximum here (the official scorer counts ties as wrong; rows from task3_row are
    never tied when the model has an opinion)."""
    probabilities = np.asarray(probabilities, np.float64)
    labels = _labels(labels, probabilities.shape[1])
    predicted = probabilities.argmax(axis=1)
    out = {}
    for k, name in enumerate(class_names):
        members = labels == k
        out[name] = float((predicted[members] == k).mean()) if members.any() else None
    return out


def plot_reliability(data, title="Reliability diagram", save_path=None, data_after=None):
    """Bars of accuracy per confidence bin against the diagonal (perfect calibration), with
    the bin counts; `data_after` (e.g. after temperature scaling) drawn as a second series."""
    from mrcnn import visualize
    fig = visualize._new_figure((5.5, 5))
    ax = fig.add_subplot(1, 1, 1)
    edges = np.asarray(data["bin_edges"])
    width = edges[1] - edges[0]
    centres = edges[:-1] + width / 2
    series = [("as predicted", data, "tab:blue", 0.0)]
    if data_after is not None:
        series = [("as predicted", data, "tab:blue", -width / 4), ("temperature-scaled", data_after, "tab:orange",
                                                                     width / 4)]
    for label, d, colour, shift in series:
        accuracy = [a if a is not None else 0.0 for a in d["accuracy"]]
        ax.bar(centres + shift, accuracy, width=width / (2 if data_after is not None else 1) * 0.95,
               color=colour, alpha=0.75, label=f"{label} (n={sum(d['counts'])})")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (largest class probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    return visualize._finish(fig, save_path)


############################################################
#  Runs: T fitted on the validation split, stored beside the checkpoints
############################################################

def write_run_calibration(run_dir, probabilities, labels, source, bins=DEFAULT_BINS):
    """Fit T on (probabilities, labels) and write `calibration.json` into `run_dir`: T, the
    number of images, the NLL and ECE before and after, and what it was fitted on (`source`).
    Returns the record."""
    probabilities = np.asarray(probabilities, np.float64)
    labels = _labels(labels, probabilities.shape[1])
    temperature = fit_temperature(probabilities, labels)
    logits = _logits(probabilities, True)
    scaled = apply_temperature(probabilities, temperature)
    record = {"temperature": temperature, "num_images": int(len(labels)), "fitted_on": source, "bins": bins,
              "nll_before": negative_log_likelihood(logits, labels, 1.0) if len(labels) else None,
              "nll_after": negative_log_likelihood(logits, labels, temperature) if len(labels) else None,
              "ece_before": expected_calibration_error(probabilities, labels, bins),
              "ece_after": expected_calibration_error(scaled, labels, bins)}
    atomic.write_json(pathlib.Path(run_dir) / CALIBRATION_FILE, record)
    log.info("Task 3 temperature %.3f fitted on %d images (%s): ECE %.4f -> %.4f", temperature,
             record["num_images"], source, record["ece_before"], record["ece_after"])
    return record


def fit_run_from_predictions(run_dir, pred_csv, diagnoses, source, bins=DEFAULT_BINS):
    """write_run_calibration from a Task 3 submission CSV that investigate wrote (the run's
    validation rows) and {image id: diagnosis} of those images; only the CSV's images that have
    a diagnosis are used. Returns the record."""
    from isic.evaluation import submission_files
    table = submission_files.read_task3_csv(pred_csv)
    ids = [i for i in table.index if i in diagnoses]
    if not ids:
        raise ValueError(f"{pred_csv}: none of its images has a diagnosis to fit a temperature on")
    labels = np.array([layout.DIAGNOSES.index(diagnoses[i]) for i in ids])
    rows = table.loc[ids, list(layout.DIAGNOSES)].to_numpy(np.float64)
    return write_run_calibration(run_dir, rows, labels, source, bins)


def run_temperature(weights_path):
    """T from the calibration.json beside a checkpoint file, or None (not calibrated, or the
    weights are a keyword such as "none" rather than a file)."""
    if weights_path is None or not pathlib.Path(weights_path).is_file():
        return None
    path = pathlib.Path(weights_path).parent / CALIBRATION_FILE
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        return float(json.load(f)["temperature"])


def calibrated_rows(rows, temperature):
    """Task 3 rows [N, 7] (or one row [7]) with T applied; unchanged when T is None."""
    if temperature is None:
        return np.asarray(rows, np.float64)
    return apply_temperature(rows, temperature)


############################################################
#  Investigate's Task 3 block
############################################################

def investigation_block(truth, rows, fig_dir=None, temperature=None, bins=DEFAULT_BINS):
    """What investigate reports beside the official Task 3 metrics: per-class recall, ECE and
    the reliability data of the rows (and, given T, of the temperature-scaled rows), and the
    reliability figure in `fig_dir` (RELIABILITY_FIGURE). truth: one-hot [N, 7] or labels."""
    rows = np.asarray(rows, np.float64)
    labels = _labels(truth, rows.shape[1])
    block = {"per_class_recall": per_class_recall(rows, labels), "bins": bins,
             "ece": expected_calibration_error(rows, labels, bins), "reliability": reliability(rows, labels, bins),
             "temperature": temperature}
    after = None
    if temperature is not None:
        scaled = apply_temperature(rows, temperature)
        block["ece_temperature_scaled"] = expected_calibration_error(scaled, labels, bins)
        after = block["reliability_temperature_scaled"] = reliability(scaled, labels, bins)
    if fig_dir is not None:
        plot_reliability(block["reliability"], title=f"Task 3 reliability (ECE {block['ece']:.3f})",
                         save_path=pathlib.Path(fig_dir) / RELIABILITY_FIGURE, data_after=after)
    return block


def report_lines(block):
    """Markdown lines of an investigation_block for report.md (the figure itself is linked with
    the report's other figures, once)."""
    recall = ", ".join(f"{c} {'-' if r is None else f'{r:.2f}'}" for c, r in block["per_class_recall"].items())
    lines = ["", f"Per-class recall: {recall}", "",
             f"Expected calibration error ({block['bins']} equal-width bins): {block['ece']:.4f}"]
    if block.get("temperature") is not None:
        lines[-1] += (f"; after temperature scaling (T = {block['temperature']:.3f}): "
                      f"{block['ece_temperature_scaled']:.4f}")
    return lines + [f"(reliability diagram: figures/{RELIABILITY_FIGURE}, shown with the other figures)", ""]
