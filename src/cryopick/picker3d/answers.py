"""Learning from the user's yes/no answers: the answers table, a small classifier, the adapted picker.

The user answers "is this one too?" for a few candidates (:mod:`.candidates`) of a prompt
(:class:`Answers`, ``answers.csv``); :func:`adapt` turns the prompt and the answers into an
:class:`AdaptedModel`: a reference code (the prompt's examples plus the confirmed positives, combined
as ``refine`` combines them), a PCA of the embedding space, and a class-balanced L2 logistic
regression on standardised candidate features, with a probability threshold chosen on the answers
(leave-one-out) or 0.5. Several prompts adapted together use each other's positives as negatives.
The adapted model is a small ``.adapted.npz`` file: other tomograms of the data set are picked with
it (:meth:`AdaptedModel.pick`) without more answers. Positions are working voxels ``x, y, z``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.io.atomic import atomic_path, write_text
from cryopick.picker3d.candidates import BASE_FEATURES, CandidateSet, find_candidates
from cryopick.postprocess.nms import nms_points

ADAPTED_FORMAT = "cryopick-adapted3d-v1"
ANSWER_COLUMNS = ("tomogram", "label", "x", "y", "z", "answer")
EXTRA_COLUMNS = ("p", "image", "path")
YES, NO = {"yes", "y", "true", "1", "+"}, {"no", "n", "false", "0", "-"}
N_PCA = 8


# -- the answers table ---------------------------------------------------------------------------------------------
class Answers:
    """Questions and their answers: ``tomogram, label, x, y, z`` (voxels of the tomogram as stored),
    ``answer`` (``""`` = not answered yet, ``yes``, ``no``, or the label of the class it is instead)
    and the informative ``p`` (classifier probability when asked), ``image`` (its PNG) and ``path``
    (where the tomogram was read)."""

    def __init__(self, table: pd.DataFrame | None = None) -> None:
        table = pd.DataFrame(columns=list(ANSWER_COLUMNS + EXTRA_COLUMNS)) if table is None else table.copy()
        for c in ANSWER_COLUMNS + EXTRA_COLUMNS:
            if c not in table:
                table[c] = np.nan if c == "p" else ""
        table = table[list(ANSWER_COLUMNS + EXTRA_COLUMNS)].reset_index(drop=True)
        for c in ("tomogram", "label", "answer", "image", "path"):
            table[c] = ["" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in table[c]]
        table["answer"] = [normalise_answer(a) for a in table["answer"]]
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    @classmethod
    def read(cls, path: str | os.PathLike) -> "Answers":
        """Read an ``answers.csv``; a malformed file or row is one :class:`CryopickError` naming the line."""
        path = Path(path)
        fix = "fill the `answer` column of the file `cryopick ask3d` wrote with yes, no or a class label"
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a text file"
            raise CryopickError(f"{path}: cannot read the answers ({reason}); {fix}") from None
        reader = csv.reader(io.StringIO(text))
        header = [h.strip().lower() for h in next(reader, [])]
        missing = [c for c in ANSWER_COLUMNS if c not in header]
        if missing:
            raise CryopickError(f"{path}: line 1: missing column(s) {', '.join(missing)}; {fix}")
        rows = []
        for line, row in enumerate(reader, start=2):
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                raise CryopickError(f"{path}: line {line}: {len(row)} fields, the header has {len(header)} "
                                    "(a comma inside an answer?); " + fix)
            rec = dict(zip(header, (cell.strip() for cell in row)))
            for axis in "xyz":
                try:
                    rec[axis] = float(rec.get(axis, ""))
                except ValueError:
                    rec[axis] = math.nan
                if not math.isfinite(rec[axis]):
                    raise CryopickError(f"{path}: line {line}: {axis} must be a voxel number, got "
                                        f"{rec.get(axis)!r}; {fix}")
            if not rec.get("tomogram") or not rec.get("label"):
                raise CryopickError(f"{path}: line {line}: empty tomogram or label; {fix}")
            try:
                rec["p"] = float(rec.get("p") or "nan")
            except ValueError:
                rec["p"] = math.nan
            rows.append(rec)
        return cls(pd.DataFrame(rows, columns=list(dict.fromkeys(list(ANSWER_COLUMNS + EXTRA_COLUMNS) + header))))

    def write(self, path: str | os.PathLike) -> Path:
        """Write the table as CSV, atomically."""
        path = Path(path)
        buf = io.StringIO()
        self.table.to_csv(buf, index=False, float_format="%.4g")
        try:
            write_text(path, buf.getvalue())
        except OSError as exc:
            raise CryopickError(f"{path}: cannot write the answers ({exc.strerror or exc}); choose another -o") from None
        return path

    def concat(self, other: "Answers") -> "Answers":
        return Answers(pd.concat([self.table, other.table], ignore_index=True))

    def answered(self) -> "Answers":
        return Answers(self.table[self.table["answer"] != ""])

    def coords(self) -> np.ndarray:
        return self.table[["x", "y", "z"]].to_numpy(float).reshape(-1, 3)

    def targets(self, label: str) -> np.ndarray:
        """Per row, what it says about class ``label``: 1 = one of it, 0 = not, -1 = nothing.

        A row asking about ``label``: yes -> 1, no or another class -> 0. A row asking about another
        class M: yes (it is an M) -> 0; the answer ``label`` -> 1; another named class -> 0; no -> -1."""
        out = np.full(len(self.table), -1, int)
        for i, (asked, ans) in enumerate(zip(self.table["label"], self.table["answer"])):
            if not ans:
                continue
            if ans == label or (asked == label and ans == "yes"):
                out[i] = 1
            elif asked == label or ans == "yes" or ans not in ("no", "other"):
                out[i] = 0
        return out


def normalise_answer(answer) -> str:
    """``yes`` / ``no`` / ``""`` / a class label (``other:NAME`` or ``NAME``; ``other`` = some other class)."""
    text = "" if answer is None or (isinstance(answer, float) and math.isnan(answer)) else str(answer).strip()
    low = text.lower()
    if low in YES:
        return "yes"
    if low in NO:
        return "no"
    if low.startswith("other:"):
        text = text[6:].strip() or "other"
    return "other" if text.lower() == "other" else text


def read_answers(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> Answers:
    """Answers from files and folders (a folder: its ``answers.csv``, or every ``*.csv`` in it)."""
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    out = Answers()
    for p in map(Path, paths):
        if p.is_dir():
            files = [p / "answers.csv"] if (p / "answers.csv").is_file() else sorted(p.glob("*.csv"))
            if not files:
                raise CryopickError(f"{p}: no answers.csv in this folder; give the file `cryopick ask3d` wrote")
        elif p.is_file():
            files = [p]
        else:
            raise CryopickError(f"{p}: no such answers file; give the answers.csv `cryopick ask3d` wrote")
        for f in files:
            out = out.concat(Answers.read(f))
    return out


def _unit(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, float)
    return a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-9)


# -- the adapted model ---------------------------------------------------------------------------------------------
@dataclass
class AdaptedModel:
    """What the answers taught about one prompt's class (see the module docstring); a small typed file.

    ``ref_embedding`` / ``ref_prototypes``: reference code (prompt + confirmed positives);
    ``pca_mean`` / ``pca_axes``: projection of the unit ``[embedding, prototypes]`` vectors;
    ``mean`` / ``scale``: feature standardisation; ``weights`` / ``bias``: the logistic regression
    (``weights`` all zero = not fitted: the score is the similarity to the reference);
    ``threshold``: minimum classifier probability of a pick; ``candidate_threshold``: map threshold
    of the candidates; ``diameter``: working voxels; ``min_distance``: NMS distance (working voxels)."""

    label: str
    ref_embedding: np.ndarray
    ref_prototypes: np.ndarray
    pca_mean: np.ndarray
    pca_axes: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: float
    threshold: float
    candidate_threshold: float
    diameter: float
    min_distance: float
    info: dict = field(default_factory=dict)

    @property
    def fitted(self) -> bool:
        return bool(np.any(self.weights != 0))

    def features(self, cands: CandidateSet) -> np.ndarray:
        """``(N, F)`` unstandardised features: map features, two similarities to the reference, PCA."""
        emb = _unit(cands.embedding)
        sim_e = emb @ _unit(self.ref_embedding)
        if cands.prototypes.shape[1] and self.ref_prototypes.size:
            sim_p = _unit(cands.prototypes) @ _unit(self.ref_prototypes)
            vec = np.concatenate([emb, _unit(cands.prototypes)], axis=1)
        else:
            sim_p, vec = sim_e, emb
        pca = (vec - self.pca_mean) @ self.pca_axes.T
        return np.column_stack([cands.base, sim_e, sim_p, pca])

    def predict(self, cands: CandidateSet) -> np.ndarray:
        """``(N,)`` probability of being the prompted particle (similarity mapped to 0..1 when not fitted)."""
        x = self.features(cands)
        if not self.fitted:
            return np.clip(0.5 * (x[:, len(BASE_FEATURES)] + x[:, len(BASE_FEATURES) + 1]), 0, 1)
        return _sigmoid((x - self.mean) / self.scale @ self.weights + self.bias)

    def pick(self, model, prob: np.ndarray, volume, bf16: bool = False, tomogram: str = "") -> tuple[np.ndarray,
                                                                                                 np.ndarray]:
        """Candidates of ``prob`` kept when their probability reaches :attr:`threshold`, thinned by NMS:
        ``(N, 3)`` working-voxel picks and their probabilities (what :meth:`TomogramPicker.predict` calls)."""
        coords = find_candidates(prob, self.diameter, self.candidate_threshold)
        if not len(coords):
            return np.zeros((0, 3)), np.zeros(0)
        cands = CandidateSet.at(model, volume, prob, coords, label=self.label, tomogram=tomogram,
                                diameter=self.diameter, threshold=self.candidate_threshold, bf16=bf16)
        p = self.predict(cands)
        keep = np.flatnonzero(p >= self.threshold)
        coords, p = coords[keep], p[keep]
        if len(coords) and self.min_distance > 0:
            k = nms_points(coords, p, self.min_distance)
            coords, p = coords[k], p[k]
        return coords, p

    def fingerprint(self) -> str:
        import hashlib

        h = hashlib.sha256(self.label.encode())
        for a in (self.ref_embedding, self.ref_prototypes, self.pca_mean, self.pca_axes, self.mean, self.scale,
                  self.weights, [self.bias, self.threshold, self.candidate_threshold, self.diameter, self.min_distance]):
            h.update(np.ascontiguousarray(a, np.float64).tobytes())
        return h.hexdigest()

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``<label>.adapted.npz`` (numpy arrays + a JSON header), atomically."""
        from cryopick.io.jsonutil import dumps

        path = Path(path)
        arrays = {k: np.asarray(getattr(self, k), np.float64) for k in _ARRAYS}
        header = {"format": ADAPTED_FORMAT, "label": self.label, "bias": float(self.bias),
                  "threshold": float(self.threshold), "candidate_threshold": float(self.candidate_threshold),
                  "diameter": float(self.diameter), "min_distance": float(self.min_distance), "info": self.info}
        buf = io.BytesIO()
        np.savez_compressed(buf, header=np.array(dumps(header)), **arrays)
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(buf.getvalue())
        except OSError as exc:
            raise CryopickError(f"{path}: cannot write the adapted model ({exc.strerror or exc})") from None
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AdaptedModel":
        path = Path(path)
        fix = "give a .adapted.npz written by `cryopick ask3d` or `cryopick pick3d --answers`"
        if not path.is_file():
            raise CryopickError(f"{path}: no such adapted-model file; {fix}")
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(str(data["header"]))
                arrays = {k: np.asarray(data[k], float) for k in _ARRAYS}
            if header.pop("format") != ADAPTED_FORMAT:
                raise ValueError
            model = cls(**arrays, **header)
        except Exception:  # numpy/zipfile/json/TypeError on foreign or damaged files
            raise CryopickError(f"{path}: not a cryopick adapted-model file (unreadable or damaged); {fix}") from None
        if model.mean.shape != model.weights.shape or not all(np.isfinite(arrays[k]).all() for k in arrays):
            raise CryopickError(f"{path}: damaged adapted-model file; {fix}")
        return model


_ARRAYS = ("ref_embedding", "ref_prototypes", "pca_mean", "pca_axes", "mean", "scale", "weights")


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(t, -40, 40)))


def fit_logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None, l2: float = 1.0,
                 iterations: int = 50, adaptive: bool = True) -> tuple[np.ndarray, float]:
    """L2-regularised logistic regression by Newton steps: ``(weights, bias)`` for standardised ``x``.

    ``weight``: per-sample weights (e.g. class-balanced); the bias is not penalised. ``adaptive``:
    each feature's penalty is ``l2 / max(r, 0.3)²``, ``r`` = its class-mean difference over the largest one
    (an adaptive ridge: with a handful of answers the features that differ between yes and no carry
    the fit, not the noise of the others)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, float)
    a = np.column_stack([x, np.ones(len(y))])
    beta = np.zeros(a.shape[1])
    reg = np.full(a.shape[1], float(l2))
    if adaptive and 0 < y.sum() < len(y):
        diff = np.abs(np.average(x[y == 1], 0, w[y == 1]) - np.average(x[y == 0], 0, w[y == 0]))
        r = diff / max(float(diff.max()), 1e-9)
        reg[:-1] = l2 / np.maximum(r, 0.3) ** 2
    reg[-1] = 1e-6
    for _ in range(iterations):
        p = _sigmoid(a @ beta)
        grad = a.T @ (w * (p - y)) + reg * beta
        hess = (a * (w * p * (1 - p))[:, None]).T @ a + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-8:
            break
    return beta[:-1], float(beta[-1])


def reference_code(model, prompt, positives: CandidateSet | None = None,
                   code: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Unit embedding and prototypes of the prompt's code (:func:`~cryopick.picker3d.prompt.prompt_embedding`,
    or ``code`` when computed already) averaged with the codes of the ``positives`` (confirmed
    candidates, encoded already), embedding renormalised, as :meth:`ProPicker.combine` does."""
    from cryopick.picker3d.prompt import prompt_embedding

    if code is None:
        code = prompt_embedding(model, prompt).detach().float().numpy()
    code = np.asarray(code, float).reshape(-1)
    e = model.segmenter.embed_dim
    if positives is not None and len(positives) and positives.prototypes.shape[1] == len(code) - e:
        code = np.concatenate([code[None], np.column_stack([positives.embedding, positives.prototypes])]).mean(0)
        code[:e] /= max(float(np.linalg.norm(code[:e])), 1e-9)
    return code[:e], code[e:]


def adapt(model, prompt, pool: CandidateSet, labelled: CandidateSet, y: np.ndarray, *,
          candidate_threshold: float, min_distance: float | None = None,
          fallback_threshold: float = 0.5, l2: float = 1.0, code: np.ndarray | None = None) -> AdaptedModel:
    """Fit the :class:`AdaptedModel` of ``prompt`` from the labelled candidates.

    ``pool``: the unlabelled candidates of the answered tomogram(s) (PCA and standardisation);
    ``labelled`` with ``y`` (1 = the prompted particle, 0 = not): answers and the prompt's own
    examples (the positives also join the reference code). With fewer than two positives or no
    negative the model is left unfitted (score = mean similarity to the reference code, threshold
    ``fallback_threshold``: the default settings' minimum similarity; ``pick3d`` then uses the
    settings). The
    threshold is the leave-one-out F1 optimum over the answers when there are at least two of each
    kind, else 0.5. ``code``: the prompt's code when computed already (a session adapting every round)."""
    y = np.asarray(y, int).reshape(-1)
    ref_e, ref_p = reference_code(model, prompt, labelled.subset(np.flatnonzero(y == 1)) if len(y) else None, code)
    vec = np.concatenate([_unit(pool.embedding), _unit(pool.prototypes) if pool.prototypes.shape[1] else
                          pool.prototypes], axis=1)
    pca_mean = vec.mean(0) if len(vec) else np.zeros(vec.shape[1])
    axes = np.zeros((N_PCA, vec.shape[1]))
    if len(vec) > 1:
        _, _, vt = np.linalg.svd(vec - pca_mean, full_matrices=False)
        axes[: min(N_PCA, len(vt))] = vt[:N_PCA]
    diameter = float(pool.diameter)
    nf = len(BASE_FEATURES) + 2 + N_PCA
    am = AdaptedModel(prompt.label, ref_e, ref_p, pca_mean, axes, np.zeros(nf), np.ones(nf), np.zeros(nf), 0.0,
                      float(fallback_threshold), float(candidate_threshold), diameter,
                      float(diameter / 2 if min_distance is None else min_distance),
                      {"n_positive": int((y == 1).sum()), "n_negative": int((y == 0).sum()), "n_pool": len(pool)})
    x_pool = am.features(pool)
    if len(x_pool) > 1:
        am.mean, am.scale = x_pool.mean(0), x_pool.std(0)
    am.scale = np.where(am.scale > 1e-6, am.scale, 1.0)
    if (y == 1).sum() < 2 or not (y == 0).any():  # too little to tell the class from the others yet
        return am
    x = am.features(labelled)
    xs = (x - am.mean) / am.scale
    am.weights, am.bias = fit_logistic(xs, y, _balanced(y), l2)
    am.threshold = 0.5
    if am.info["n_positive"] >= 2 and am.info["n_negative"] >= 2:
        am.threshold = _loo_threshold(xs, y, l2)
    am.info["threshold_from"] = "leave-one-out" if am.threshold != 0.5 else "default 0.5"
    return am


def _balanced(y: np.ndarray) -> np.ndarray:
    n1, n0 = max(1, int((y == 1).sum())), max(1, int((y == 0).sum()))
    return np.where(y == 1, len(y) / (2 * n1), len(y) / (2 * n0))


def _loo_threshold(xs: np.ndarray, y: np.ndarray, l2: float) -> float:
    """The probability threshold with the best leave-one-out F1 on the labelled samples (ties: nearest 0.5)."""
    p = np.zeros(len(y))
    for i in range(len(y)):
        rest = np.arange(len(y)) != i
        w, b = fit_logistic(xs[rest], y[rest], _balanced(y[rest]), l2)
        p[i] = _sigmoid(xs[i] @ w + b)
    best, best_t = -1.0, 0.5
    for t in sorted(np.round(np.arange(0.2, 0.801, 0.05), 2), key=lambda t: abs(t - 0.5)):
        tp = int(((p >= t) & (y == 1)).sum())
        f1 = 2 * tp / max(1, int((p >= t).sum()) + int((y == 1).sum()))
        if f1 > best + 1e-9:
            best, best_t = f1, float(t)
    return best_t
