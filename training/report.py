"""The evaluation report: metrics.json, report.md (ours beside the published numbers),
roc.png and examples.png, written together into one folder atomically."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # object API: the Agg canvas, no pyplot global state

from deeplense.atomic import atomic_directory
from deeplense.errors import OutputExistsError
from deeplense.scores import list_scores
from deeplense.vocabulary import NORMAL
from training.evaluate import COMPARISONS, Evaluation

# Published results of arXiv 2008.12731 (REFERENCE.md), by dataset then model.
PUBLISHED_AUC: dict[str, dict[str, float]] = {
    "model_a": {"aae": 0.93207, "vae": 0.89910, "dcae": 0.73034, "rbm": 0.51540},
    "model_b": {"aae": 0.76943, "vae": 0.73545, "dcae": 0.66992, "rbm": 0.50870},
}
PUBLISHED_W1: dict[str, dict[str, float]] = {
    "model_a": {"aae": 0.22117, "vae": 0.22533, "dcae": 0.26566, "rbm": 1.27070},
    "model_b": {"aae": 0.15563, "vae": 0.16617, "dcae": 0.23653, "rbm": 1.25804},
}
# Supervised reference (ResNet-18 classifier trained with labels), Model A only.
SUPERVISED_AUC: dict[str, float] = {"model_a": 0.996}
PUBLISHED_IMAGE_SIZE = 150  # W1 sums pixels over columns, so it is comparable only at 150x150

REPORT_FILES = ("metrics.json", "report.md", "roc.png", "examples.png")


def check_output(out_dir: Path, overwrite: bool) -> None:
    """Refuse an existing report folder unless `overwrite` (checked before any slow work)."""
    if Path(out_dir).exists() and not overwrite:
        raise OutputExistsError(f"{out_dir} exists; pass --overwrite to replace it")


def _published(table: dict[str, dict[str, float]], dataset: str | None, arch: str) -> float | None:
    return table.get(dataset or "", {}).get(arch)


def metrics_document(evaluation: Evaluation) -> dict[str, Any]:
    """Everything measured, as a JSON-ready dict (metrics.json)."""
    models: dict[str, Any] = {}
    for name, result in evaluation.models.items():
        arch = result.architecture
        models[name] = {
            "architecture": arch,
            "checkpoint": str(result.checkpoint),
            "image_size": result.image_size,
            "metrics": result.metrics,
            "default_score": result.default_score,
            "warnings": result.warnings,
            "published": {
                "auc_sub": _published(PUBLISHED_AUC, evaluation.dataset, arch),
                "w1_no_sub": _published(PUBLISHED_W1, evaluation.dataset, arch),
            },
            "training": result.training,
        }
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": evaluation.dataset,
        "data_dir": str(evaluation.data_dir),
        "manifest_sha256": evaluation.manifest_sha256,
        "n_test_images": evaluation.n_images,
        "psf": evaluation.psf,
        "device": evaluation.device,
        "models": models,
    }


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None or not np.isfinite(value):
        return "—"
    return f"{value:.{digits}f}"


def _fmt_sci(value: float | None) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.3e}"


def _fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _delta(ours: float | None, published: float | None) -> str:
    if ours is None or published is None:
        return "—"
    return f"{ours - published:+.4f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def render_markdown(evaluation: Evaluation) -> str:
    """report.md: our numbers beside the published ones, then the per-class details."""
    ds = evaluation.dataset
    items = list(evaluation.models.items())
    counts = ", ".join(f"{n} {c}" for c, n in evaluation.n_images.items())
    out = [
        f"# DeepLense anomaly evaluation: {ds or 'unknown dataset'}",
        "",
        f"- Data: `{evaluation.data_dir}` (manifest sha256 `{evaluation.manifest_sha256 or '—'}`)",
        f"- Test images: {counts}",
        f"- PSF told to the models: {evaluation.psf}",
        f"- Device: {evaluation.device}",
        f"- Published numbers: arXiv 2008.12731 ({ds or 'no dataset recorded: not compared'})",
        "",
    ]
    for name, r in items:
        for warning in r.warnings:
            out += [f"> **WARNING ({name})**: {warning}", ""]
    out += [
        "## ROC-AUC, substructure (sphere + vort) vs no_sub (higher is better)",
        "",
        "With the checkpoint's default score (the one the service judges by; chosen on the",
        "labelled validation split at calibration, never on this test split).",
        "",
    ]
    rows = []
    for name, r in items:
        auc = r.metrics.get("auc_sub")
        pub = _published(PUBLISHED_AUC, ds, r.architecture)
        sub_cols = [_fmt(r.metrics.get(f"auc_{c}")) for c in COMPARISONS if c != "sub"]
        rows.append([name, r.default_score, _fmt(auc), _fmt(pub, 5), _delta(auc, pub), *sub_cols])
    sub_names = [f"AUC {c} vs {NORMAL}" for c in COMPARISONS if c != "sub"]
    header = ["model", "score", "AUC (ours)", "AUC (published)", "difference", *sub_names]
    out += _table(header, rows)
    if ds in SUPERVISED_AUC:
        out += [f"Supervised reference (ResNet-18 with labels): AUC {SUPERVISED_AUC[ds]}.", ""]

    out += [
        "## ROC-AUC of every score (sub / sphere / vort vs no_sub)",
        "",
        "mse is the study's score; chi2, chi2_psf and chi2_psf_light whiten the residual by the",
        "noise estimated from each image (`deeplense.scores`). Published numbers used mse.",
        "",
    ]
    rows = []
    for name, r in items:
        for score in list_scores():
            cells = [_fmt(r.metrics.get(f"auc_{score}_{c}")) for c in COMPARISONS]
            if any(c != "—" for c in cells):
                rows.append([name, score, *cells])
    out += _table(["model", "score", *[f"AUC {c}" for c in COMPARISONS]], rows)

    out += ["## W1 on no_sub test images (lower is better)", ""]
    rows = []
    for name, r in items:
        w1 = r.metrics.get(f"w1_{NORMAL}")
        pub = _published(PUBLISHED_W1, ds, r.architecture)
        rows.append([name, _fmt(w1), _fmt(pub, 5), _delta(w1, pub), f"{r.image_size}"])
    out += _table(["model", "W1 (ours)", "W1 (published)", "difference", "image side (px)"], rows)
    out += [
        "W1 is the 1-D Wasserstein distance between the column sums of input and reconstruction,"
        f" in summed-pixel units: comparable to the published value only at "
        f"{PUBLISHED_IMAGE_SIZE}x{PUBLISHED_IMAGE_SIZE}.",
        "",
        "## Mean reconstruction error (MSE) per class",
        "",
    ]
    classes = list(evaluation.n_images)

    def mse_cell(metrics: dict[str, float], cls: str) -> str:
        spread = metrics.get(f"mse_spread_{cls}")
        return _fmt_sci(metrics.get(f"mse_{cls}")) + (
            "" if spread is None else f" ({100 * spread:.0f}%)"
        )

    rows = [[name, *[mse_cell(r.metrics, c) for c in classes]] for name, r in items]
    out += _table(["model", *classes], rows)
    out += [
        "In brackets: the spread of the per-image MSE across the class's images (standard "
        "deviation over mean). The study's AAE: 1.27e-4 on no_sub, spread about 9%.",
        "",
    ]

    out += [
        "## Reconstruction health",
        "",
        "spread ratio: how much the reconstructions vary between no_sub test images relative to",
        "the inputs (near 0: one image for every input, collapsed); loss ratio: MSE over that of",
        "the mean image (near 1 or above: learned nothing).",
        "",
    ]
    rows = [
        [
            name,
            _fmt(r.metrics.get("spread_ratio"), 3),
            _fmt(r.metrics.get("loss_ratio"), 3),
            "COLLAPSED / WARNING" if r.warnings else "ok",
        ]
        for name, r in items
    ]
    out += _table(["model", "spread ratio", "loss ratio", "verdict"], rows)

    out += [
        "## Calibrated threshold of the default score on the test set (flag = score > threshold)",
        "",
    ]
    tpr_cols = [c for c in COMPARISONS]
    rows = []
    for name, r in items:
        m = r.metrics
        rows.append(
            [
                name,
                _fmt_sci(m.get("threshold")),
                _fmt(m.get("calibration_fpr"), 3),
                _fmt(m.get("test_fpr"), 3),
                *[_fmt(m.get(f"test_tpr_{c}"), 3) for c in tpr_cols],
            ]
        )
    out += _table(
        ["model", "threshold", "target FPR (val)", "FPR (test)", *[f"TPR {c}" for c in tpr_cols]],
        rows,
    )

    out += ["## Training", ""]
    rows = []
    for name, r in items:
        t = r.training
        wall = t.get("wall_time_s")
        rows.append(
            [
                name,
                str(t.get("n_train", "—")),
                str(t.get("epochs", "—")),
                str(t.get("batch_size", "—")),
                str(t.get("device", "—")),
                _fmt_duration(wall),
                str(t.get("budget") or "—"),
            ]
        )
    out += _table(
        ["model", "train images", "epochs", "batch", "device", "wall time", "budget"], rows
    )
    out += [
        "Figures: `roc.png` (ROC curves), `examples.png` (input / reconstruction / residual).",
        "",
    ]
    return "\n".join(out)


def plot_roc(evaluation: Evaluation, path: Path) -> None:
    """roc.png: one panel per comparison, every model's ROC curve with its AUC."""
    panels = list(COMPARISONS)
    fig = Figure(figsize=(4.2 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, comparison in zip(axes, panels, strict=True):
        for name, result in evaluation.models.items():
            if comparison not in result.roc:
                continue
            fpr, tpr = result.roc[comparison]
            auc = result.metrics.get(f"auc_{comparison}", float("nan"))
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc:.3f})")
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1.01),
            xlabel="false-positive rate",
            ylabel="true-positive rate",
            title=f"{comparison} vs {NORMAL}",
        )
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"ROC curves: {evaluation.dataset or evaluation.data_dir.name}")
    fig.savefig(path, dpi=110)


def plot_examples(evaluation: Evaluation, path: Path) -> None:
    """examples.png: per model and class, k x (input, reconstruction, |residual|)."""
    rows = [
        (name, cls, ex)
        for name, result in evaluation.models.items()
        for cls, ex in result.examples.items()
    ]
    k = max((len(ex.inputs) for _, _, ex in rows), default=1)
    n_rows, n_cols = max(len(rows), 1), 3 * k
    fig = Figure(figsize=(1.4 * n_cols, 1.5 * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for i, (name, cls, ex) in enumerate(rows):
        for j in range(len(ex.inputs)):
            x, x_hat = ex.inputs[j], ex.reconstructions[j]
            panels = [(x, "gray", 1.0, "input"), (x_hat, "gray", 1.0, "reconstruction")]
            residual = np.abs(x - x_hat)
            panels.append((residual, "magma", max(float(residual.max()), 1e-6), "|residual|"))
            for p, (img, cmap, vmax, title) in enumerate(panels):
                ax = axes[i, 3 * j + p]
                ax.imshow(img, cmap=cmap, vmin=0.0, vmax=vmax, interpolation="nearest")
                if i == 0:
                    ax.set_title(title, fontsize=7)
        axes[i, 0].set_axis_on()
        axes[i, 0].set_xticks([])
        axes[i, 0].set_yticks([])
        axes[i, 0].set_ylabel(f"{name}\n{cls}", fontsize=8)
    fig.suptitle("input / reconstruction / |input - reconstruction| (residual scaled per image)")
    fig.savefig(path, dpi=90)


def write_report(evaluation: Evaluation, out_dir: Path, overwrite: bool = False) -> Path:
    """Write the four report files into `out_dir` atomically (temp folder, then rename)."""
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite)
    with atomic_directory(out_dir, overwrite=True, shared=True) as tmp:
        document = metrics_document(evaluation)
        (tmp / "metrics.json").write_text(json.dumps(document, indent=2, allow_nan=False) + "\n")
        (tmp / "report.md").write_text(render_markdown(evaluation))
        plot_roc(evaluation, tmp / "roc.png")
        plot_examples(evaluation, tmp / "examples.png")
    return out_dir
