"""Compare pickers side by side: compute every score, then write Markdown, PNG figures and JSON.

>>> summary = evaluate_methods({"cryopick": picks, "template": tm}, truth, diameter=108)
>>> write_report(summary, "report/", images={"mic_001": image})

``report.json`` holds every number in the Markdown (and more): ``settings``, ``methods`` (per method:
``pooled`` scores at each tolerance, ``per_micrograph`` rows, ``curve`` with ``auprc``, ``best`` and
``scope`` (score range and recall the curve covers, the threshold the picks were written with, a note),
``pixel`` scores, ``recall_success_rate``) and ``statistics`` (paired tests). Figures:
``pr_curves.png``, ``per_micrograph_boxplot.png``, ``grouped_bars.png`` and ``overlay_<micrograph>.png``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from cryopick.evaluate.curves import curve_scope, pr_curve
from cryopick.evaluate.metrics import evaluate_picks, resolve_diameter
from cryopick.evaluate.pixel import evaluate_pixels
from cryopick.evaluate.stats import compare_methods, recall_success_rate
from cryopick.io.atomic import atomic_path, write_text
from cryopick.io.jsonutil import dumps
from cryopick.picks import Picks, filter_score

METRICS = ("precision", "recall", "f1")
#: colour per role in overlays
TRUTH_COLOUR, TP_COLOUR, FP_COLOUR = "#2ca02c", "#1f77b4", "#d62728"


def evaluate_methods(
    methods: dict[str, Picks],
    truth: Picks,
    diameter: float | None = None,
    rule: str = "radius",
    tolerance: float = 1.0,
    extra_tolerances: tuple[float, ...] = (0.5,),
    min_score: float | dict[str, float] | None = None,
    shapes: dict[str, tuple[int, ...]] | None = None,
    reference: str | None = None,
    micrographs: list[str] | None = None,
) -> dict:
    """Every score of every method against one ground truth.

    Parameters
    ----------
    methods
        ``{method name: picks}`` in the truth's pixel frame.
    truth
        Ground truth; its micrographs define the evaluated set unless ``micrographs`` is given.
    diameter
        Pixels; default the truth's median diameter.
    rule, tolerance
        Main matching rule and tolerance (particle radii); see :mod:`cryopick.evaluate.metrics`.
    extra_tolerances
        Further tolerances reported for the ``radius`` rule (default 0.5).
    min_score
        Threshold applied to the picks for the fixed-threshold scores, one for all methods or
        ``{method: threshold}`` (e.g. each calibrated on training data); the PR curve always uses
        all picks.
    shapes
        ``{micrograph: image shape}``; when given, pixel-level scores (disks vs disks) are added (2D only).
    reference
        Method tested against all others; default: all pairs (the first method when there are many).

    Returns
    -------
    dict
        JSON-ready summary (see module docstring); DataFrames are kept under ``_tables`` for plotting.
    """
    diameter = resolve_diameter(truth, diameter)
    names = micrographs if micrographs is not None else truth.micrographs
    summary: dict = dict(
        settings=dict(rule=rule, tolerance=tolerance, extra_tolerances=list(extra_tolerances), diameter=diameter,
                      min_score=min_score, n_micrographs=len(names), n_truth=int(len(truth)),
                      ndim=truth.ndim, micrographs=list(names)),
        methods={}, statistics=[], _tables={},
    )
    long_rows = []
    thresholds = min_score if isinstance(min_score, dict) else {m: min_score for m in methods}
    for method, picks in methods.items():
        thr = thresholds.get(method)
        ev = evaluate_picks(picks, truth, diameter, rule, tolerance, min_score=thr, micrographs=names)
        entry: dict = dict(n_picks=int(len(picks)), min_score=thr, pooled={_tol_key(rule, tolerance): ev.pooled},
                           per_micrograph=ev.per_micrograph.to_dict(orient="records"), settings=ev.settings)
        if rule == "radius":
            for tol in extra_tolerances:
                extra = evaluate_picks(picks, truth, diameter, rule, tol, min_score=thr, micrographs=names)
                entry["pooled"][_tol_key(rule, tol)] = extra.pooled
        entry["n_kept"] = int(ev.pooled["n_pred"])
        entry["recall_success_rate"] = {str(k): v for k, v in
                                        recall_success_rate(ev.per_micrograph["recall"]).items()}
        scores = picks.scores
        if len(picks) and np.isfinite(scores).all():
            curve = pr_curve(picks, truth, diameter, rule, tolerance, micrographs=names)
            entry["curve"] = dict(auprc=curve.auprc, best=curve.best(), n_points=int(len(curve.thresholds)),
                                  scope=curve_scope(picks, curve), **_thin_curve(curve))
            summary["_tables"].setdefault("curves", {})[method] = curve
        elif len(picks) and np.isfinite(scores).any():
            entry["curve"] = None
            entry["curve_note"] = "some picks have no score; no PR curve"
        if shapes is not None and truth.ndim == 2:
            table, pooled = evaluate_pixels(picks if thr is None else filter_score(picks, thr), truth,
                                            shapes, diameter, micrographs=names)
            entry["pixel"] = dict(pooled=pooled, per_micrograph=table.to_dict(orient="records"))
        summary["methods"][method] = entry
        summary["_tables"].setdefault("matches", {})[method] = ev.matches
        per = ev.per_micrograph.copy()
        per.insert(0, "method", method)
        long_rows.append(per)
    long = pd.concat(long_rows, ignore_index=True) if long_rows else pd.DataFrame()
    summary["_tables"]["per_micrograph"] = long
    if len(methods) >= 2:
        tests = compare_methods(long, METRICS, reference=reference)
        summary["statistics"] = tests.to_dict(orient="records")
    return summary


def _tol_key(rule: str, tolerance: float) -> str:
    if rule == "radius":
        return f"radius@{tolerance:g}"
    return rule


def _thin_curve(curve, max_points: int = 400) -> dict:
    k = len(curve.thresholds)
    idx = np.unique(np.linspace(0, k - 1, min(k, max_points)).round().astype(int)) if k else np.zeros(0, int)
    return dict(thresholds=curve.thresholds[idx].tolist(), precision=curve.precision[idx].tolist(),
                recall=curve.recall[idx].tolist())


# -- writing -------------------------------------------------------------------------------------------
def write_report(
    summary: dict,
    out_dir: str | Path,
    images: dict[str, np.ndarray] | None = None,
    methods: dict[str, Picks] | None = None,
    truth: Picks | None = None,
    overlay_micrographs: list[str] | None = None,
    title: str = "cryopick evaluation",
) -> dict[str, Path]:
    """Write ``report.md``, ``report.json`` and the figures into ``out_dir``.

    Parameters
    ----------
    summary
        From :func:`evaluate_methods`.
    images
        ``{micrograph: image array}`` for overlays (needs ``methods`` and ``truth`` too).
    overlay_micrographs
        Which micrographs to overlay; default the first two that have an image.

    Returns
    -------
    dict
        ``{"markdown": path, "json": path, "<figure>": path, ...}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    tables = summary.get("_tables", {})
    long = tables.get("per_micrograph", pd.DataFrame())
    if tables.get("curves"):
        paths["pr_curves"] = _plot_pr(tables["curves"], out / "pr_curves.png")
    if len(long):
        paths["boxplot"] = _plot_box(long, out / "per_micrograph_boxplot.png")
        paths["bars"] = _plot_bars(summary, long, out / "grouped_bars.png")
    if images and methods and truth is not None:
        chosen = overlay_micrographs or [n for n in summary["settings"]["micrographs"] if n in images][:2]
        for name in chosen:
            if name in images:
                paths[f"overlay_{name}"] = _plot_overlay(name, images[name], methods, truth, summary,
                                                        out / f"overlay_{name}.png")
    data = {k: v for k, v in summary.items() if not k.startswith("_")}
    data["figures"] = {k: p.name for k, p in paths.items()}
    with atomic_path(out / "report.json") as tmp:
        tmp.write_text(dumps(data, indent=1))
    paths["json"] = out / "report.json"
    write_text(out / "report.md", _markdown(summary, paths, title))
    paths["markdown"] = out / "report.md"
    return paths


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{v:.{digits}f}"


def _markdown(summary: dict, paths: dict[str, Path], title: str) -> str:
    s = summary["settings"]
    lines = [f"# {title}", ""]
    rule = s["rule"]
    desc = {"radius": f"centre within {s['tolerance']:g} × radius",
            "iou3d": "box IoU > 0.6 (TomoTwin/ProPicker)",
            "czii": "centre within 0.5 × radius, F-β β=4 (CZII)"}[rule]
    lines += [f"{s['n_micrographs']} {'tomograms' if s['ndim'] == 3 else 'micrographs'}, "
              f"{s['n_truth']} true particles, diameter {s['diameter']:g} px, one-to-one matching: {desc}"
              + _threshold_note(summary) + ".", ""]
    key = _tol_key(rule, s["tolerance"])
    head = "| method | picks | precision | recall | F1 |" + (" F-β |" if rule == "czii" else "")
    extra_keys = [k for k in next(iter(summary["methods"].values()), {}).get("pooled", {}) if k != key]
    head += "".join(f" F1 ({k}) |" for k in extra_keys)
    head += " mean F1/micrograph | recall ≥0.6 | recall ≥0.8 | AUPRC | best F1 (threshold) | curve ends at recall |"
    lines += ["## Particle level (pooled over micrographs)", "", head, "|" + "---|" * (head.count("|") - 1)]
    for method, e in summary["methods"].items():
        p = e["pooled"][key]
        row = f"| {method} | {e['n_kept']} | {_fmt(p['precision'])} | {_fmt(p['recall'])} | {_fmt(p['f1'])} |"
        if rule == "czii":
            row += f" {_fmt(p['fbeta'])} |"
        row += "".join(f" {_fmt(e['pooled'][k]['f1'])} |" for k in extra_keys)
        rsr = e["recall_success_rate"]
        row += f" {_fmt(p['mean_f1'])} | {_fmt(rsr.get('0.6'))} | {_fmt(rsr.get('0.8'))} |"
        c = e.get("curve")
        row += (f" {_fmt(c['auprc'])} | {_fmt(c['best']['f1'])} ({_fmt(c['best']['threshold'], 3)}) |"
                f" {_fmt(c['scope']['max_recall'])} |" if c else " – | – | – |")
        lines.append(row)
    lines.append("")
    lines += _curve_notes(summary)
    if any("pixel" in e for e in summary["methods"].values()):
        lines += ["## Pixel level (disks of the particle diameter vs truth disks)", "",
                  "| method | Dice | IoU | precision | recall |", "|---|---|---|---|---|"]
        for method, e in summary["methods"].items():
            if "pixel" in e:
                p = e["pixel"]["pooled"]
                lines.append(f"| {method} | {_fmt(p['dice'])} | {_fmt(p['iou'])} | {_fmt(p['precision'])} | "
                             f"{_fmt(p['recall'])} |")
        lines.append("")
    if summary.get("statistics"):
        lines += ["## Paired tests per micrograph (Wilcoxon signed-rank, BH-adjusted per metric)", "",
                  "r = z/√N (positive: method A higher); rank-biserial = (R+ − R−)/(R+ + R−).", "",
                  "| metric | A | B | mean A | mean B | N | p | p (BH) | r | rank-biserial |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for t in summary["statistics"]:
            lines.append(f"| {t['metric']} | {t['method_a']} | {t['method_b']} | {_fmt(t['mean_a'])} | "
                         f"{_fmt(t['mean_b'])} | {t['n']} | {t['p_value']:.3g} | {t['p_adjusted']:.3g} | "
                         f"{_fmt(t['r'])} | {_fmt(t['rank_biserial'])} |")
        lines.append("")
    lines += ["## Per micrograph", ""]
    for method, e in summary["methods"].items():
        lines += [f"### {method}", "", "| micrograph | picks | truth | TP | precision | recall | F1 |",
                  "|---|---|---|---|---|---|---|"]
        for r in e["per_micrograph"]:
            lines.append(f"| {r['micrograph']} | {r['n_pred']} | {r['n_truth']} | {r['tp']} | {_fmt(r['precision'])}"
                         f" | {_fmt(r['recall'])} | {_fmt(r['f1'])} |")
        lines.append("")
    figs = [(k, p) for k, p in paths.items() if p.suffix == ".png"]
    if figs:
        lines += ["## Figures", ""] + [f"![{k}]({p.name})" for k, p in figs] + [""]
    lines += ["Machine-readable: `report.json`.", ""]
    return "\n".join(lines)


def _curve_notes(summary: dict) -> list[str]:
    """Say what AUPRC and best F1 cover: the picks' scores, which stop at their recall when thresholded."""
    notes = [(m, e["curve"]["scope"]["note"]) for m, e in summary["methods"].items() if e.get("curve")]
    notes += [(m, e["curve_note"]) for m, e in summary["methods"].items() if e.get("curve_note")]
    if not notes:
        return []
    lines = ["AUPRC and best F1 sweep the threshold over each method's scored picks, so they are only as "
             "complete as the picks: on picks written above a threshold the curve stops at their recall.", ""]
    lines += [f"- {method}: {note}" for method, note in notes]
    return lines + [""]


def _threshold_note(summary: dict) -> str:
    thr = {m: e.get("min_score") for m, e in summary["methods"].items()}
    if all(v is None for v in thr.values()):
        return ""
    if len(set(thr.values())) == 1:
        return f"; fixed-threshold scores use picks with score ≥ {next(iter(thr.values())):g}"
    return "; fixed-threshold scores use picks with score ≥ " + ", ".join(
        f"{v:.4g} ({m})" for m, v in thr.items() if v is not None)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _colours(n: int):
    import matplotlib.pyplot as plt

    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(n)]


def _plot_pr(curves: dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for colour, (method, c) in zip(_colours(len(curves)), curves.items()):
        end = float(c.recall[-1]) if len(c.recall) else 0.0
        ax.step(c.recall, c.precision, where="post", color=colour,
                label=f"{method} (AUPRC {c.auprc:.3f}, ends at recall {end:.2f})")
        b = c.best()
        ax.plot([b["recall"]], [b["precision"]], "o", color=colour, ms=6)
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="precision",
           title="Precision–recall (dot: best F1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _save(fig, path)


def _plot_box(long: pd.DataFrame, path: Path) -> Path:
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(long["method"]))
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.2 * len(METRICS) + 0.6 * len(methods), 3.8), sharey=True)
    cols = _colours(len(methods))
    for ax, metric in zip(axes, METRICS):
        data = [long.loc[long["method"] == m, metric].to_numpy(dtype=float) for m in methods]
        bp = ax.boxplot(data, patch_artist=True, widths=0.6)
        for patch, c in zip(bp["boxes"], cols):
            patch.set_facecolor(c)
            patch.set_alpha(0.55)
        rng = np.random.default_rng(0)
        for i, d in enumerate(data):
            ax.plot(i + 1 + rng.uniform(-0.12, 0.12, len(d)), d, ".", color="k", ms=3, alpha=0.6)
        ax.set_xticks(range(1, len(methods) + 1), methods, rotation=30, ha="right")
        ax.set_title(metric)
        ax.set_ylim(0, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("per micrograph")
    return _save(fig, path)


def _plot_bars(summary: dict, long: pd.DataFrame, path: Path) -> Path:
    """Paper-style grouped bars: groups = metrics, one bar per method (mean ± s.d. over micrographs)."""
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(long["method"]))
    cols = _colours(len(methods))
    x = np.arange(len(METRICS))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(1.8 + 1.2 * len(METRICS) * max(1, len(methods)) * 0.5, 4))
    for i, (m, c) in enumerate(zip(methods, cols)):
        sub = long[long["method"] == m]
        means = [float(sub[k].mean()) for k in METRICS]
        sds = [float(sub[k].std(ddof=0)) for k in METRICS]
        bars = ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=sds, capsize=3, color=c, label=m)
        for b, v, sd in zip(bars, means, sds):
            ax.text(b.get_x() + b.get_width() / 2, min(v + sd + 0.01, 1.0), f"{v:.2f}", ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(x, [k.capitalize() if k != "f1" else "F1" for k in METRICS])
    ax.set(ylim=(0, 1.08), ylabel="mean over micrographs (± s.d.)")
    ax.legend(fontsize=8, ncol=min(len(methods), 4), loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def _display_image(image: np.ndarray, max_size: int = 1024) -> tuple[np.ndarray, int]:
    image = np.asarray(image, dtype=np.float32)
    step = max(1, int(math.ceil(max(image.shape) / max_size)))
    if step > 1:
        h, w = (image.shape[0] // step) * step, (image.shape[1] // step) * step
        image = image[:h, :w].reshape(h // step, step, w // step, step).mean(axis=(1, 3))
    lo, hi = np.percentile(image, [1, 99])
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1), step


def _plot_overlay(name: str, image: np.ndarray, methods: dict[str, Picks], truth: Picks, summary: dict,
                  path: Path) -> Path:
    """Micrograph (or the central slab of a tomogram) with truth circles and each method's TP/FP picks."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Circle

    diameter = summary["settings"]["diameter"]
    radius = diameter / 2
    t = truth.for_micrograph(name)
    tcoords = t.coords
    zsel = None
    if image.ndim == 3:  # slab around the z with most truth particles
        z0 = int(np.median(tcoords[:, 2])) if len(tcoords) else image.shape[0] // 2
        half = max(1, int(radius / 2))
        image = image[max(0, z0 - half): z0 + half + 1].mean(axis=0)
        zsel = (z0, radius)
    disp, step = _display_image(image)
    matches = summary.get("_tables", {}).get("matches", {})
    n = len(methods)
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 5.2), squeeze=False)
    for ax, (method, picks) in zip(axes[0], methods.items()):
        ax.imshow(disp, cmap="gray", interpolation="nearest")
        p = picks.for_micrograph(name)
        thr = summary["methods"][method].get("min_score")
        if thr is not None:
            p = filter_score(p, thr)
        pc = p.coords
        result = matches.get(method, {}).get(name)
        tp = np.zeros(len(pc), bool)
        if result is not None and result.n_pred == len(pc):
            tp[result.pred_index] = True
        keep_t = np.ones(len(tcoords), bool) if zsel is None else np.abs(tcoords[:, 2] - zsel[0]) <= zsel[1]
        keep_p = np.ones(len(pc), bool) if zsel is None else np.abs(pc[:, 2] - zsel[0]) <= zsel[1]
        for coords, colour, lw, ls in ((tcoords[keep_t], TRUTH_COLOUR, 1.2, "-"),
                                       (pc[keep_p & tp], TP_COLOUR, 1.0, "--"),
                                       (pc[keep_p & ~tp], FP_COLOUR, 1.0, "--")):
            circles = [Circle((c[0] / step, c[1] / step), radius / step) for c in coords]
            ax.add_collection(PatchCollection(circles, facecolor="none", edgecolor=colour, linewidths=lw,
                                              linestyle=ls))
        row = next((r for r in summary["methods"][method]["per_micrograph"] if r["micrograph"] == name), None)
        sub = f"P {row['precision']:.2f}  R {row['recall']:.2f}  F1 {row['f1']:.2f}" if row else ""
        ax.set_title(f"{method}\n{sub}", fontsize=9)
        ax.set_axis_off()
    fig.suptitle(f"{name}: truth (green), true positives (blue), false positives (red)", fontsize=10)
    return _save(fig, path)
