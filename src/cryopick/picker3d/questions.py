"""The answer loop: ask the most useful questions, adapt to the answers, pick with what was learned.

>>> session = AnswerSession([prompt])                  # shipped weights; settings as pick3d
>>> session.add_tomogram("TS_01.mrc")                  # one segmentation pass, candidates per prompt
>>> questions = session.ask(10)                        # Answers table: 10 rows to answer
>>> questions.table["answer"] = ["yes", "no", ...]     # the user (or the app) answers
>>> adapted = session.adapt(questions)                 # {label: AdaptedModel}, seconds on a CPU
>>> more = session.ask(10, questions)                  # the next questions, given the answers so far

:func:`choose_questions` picks candidates that are uncertain (classifier probability near its
threshold) and diverse (farthest-point in feature space among the uncertain ones). :func:`ask_tomogram`
(``cryopick ask3d``) writes ``answers.csv`` plus an orthogonal-slice PNG per question and reuses the
candidates of an earlier round; :func:`pick_with_answers` (``cryopick pick3d --answers/--adapted``)
adapts and picks tomograms with :func:`~cryopick.picker3d.batch.pick_tomograms`.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cryopick.errors import CryopickError
from cryopick.io.atomic import make_output_dir
from cryopick.picker3d.answers import AdaptedModel, Answers, read_answers
from cryopick.picker3d.candidates import CandidateSet, base_features, component_table, find_candidates
from cryopick.picker3d.fallback import adapt_or_keep, answers_as_truth, expected_line
from cryopick.picker3d.montage import write_question_png
from cryopick.picker3d.pick import TomogramPicker, check_prompts
from cryopick.picker3d.prompt import Prompt, load_prompt, prompt_embedding
from cryopick.picker3d.settings import resolve_settings
from cryopick.picker3d.similarity import encode_positions

log = logging.getLogger(__name__)
EXAMPLES = "#examples"  # key suffix of the features at the prompts' examples and other measured positions


def choose_questions(p: np.ndarray, features: np.ndarray, k: int, *, threshold: float = 0.5,
                     exclude: np.ndarray | None = None, answered: np.ndarray | None = None,
                     pool_factor: int = 4, seed: int = 0, exploit: float = 0.4) -> np.ndarray:
    """Indices of ``k`` candidates to ask about: a few likely ones, then uncertain and diverse ones.

    ``round(exploit * k)`` questions are the most probable candidates not asked yet: near the
    boundary most answers are no, and the classifier and the reference code need confirmed
    positives (on 18 unseen classes of ``bench_answers3d.py``, 40 % of them raised the mean F1 after
    5, 10 and 20 answers from 0.52, 0.60, 0.64 to 0.58, 0.63, 0.66; 20 % or 60 % less). For the rest, the ``max(pool_factor * k, 20)`` candidates whose
    probability ``p`` is nearest ``threshold`` (in log-odds) form the pool; the most uncertain is
    asked first, then repeatedly the pool member farthest (standardised ``features``) from every
    chosen and every ``answered`` candidate (``(M, F)`` features). ``exclude``: boolean mask of
    candidates not to ask (answered already). Deterministic for a given ``seed`` (which only breaks ties)."""
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    n = len(p)
    ok = np.ones(n, bool) if exclude is None else ~np.asarray(exclude, bool)
    idx = np.flatnonzero(ok)
    if k <= 0 or not len(idx):
        return np.zeros(0, int)
    n_top = min(int(round(exploit * k)), len(idx))
    if n_top:
        top = idx[np.argsort(-p[idx], kind="stable")[:n_top]]
        ok[top] = False
        rest = choose_questions(p, features, k - n_top, threshold=threshold, exclude=~ok, answered=answered,
                                pool_factor=pool_factor, seed=seed, exploit=0.0)
        return np.concatenate([top, rest]).astype(int)
    t = min(max(threshold, 1e-6), 1 - 1e-6)
    margin = np.abs(np.log(p / (1 - p)) - math.log(t / (1 - t)))
    jitter = np.random.default_rng(seed).uniform(0, 1e-9, n)
    pool = idx[np.argsort(margin[idx] + jitter[idx], kind="stable")[: max(pool_factor * k, 20)]]
    f = np.asarray(features, float)
    chosen = [int(pool[0])]
    ref = [f[pool[0]]] + ([] if answered is None else list(np.asarray(answered, float).reshape(-1, f.shape[1])))
    dist = np.min(np.linalg.norm(f[pool][:, None] - np.asarray(ref)[None], axis=2), axis=1)
    while len(chosen) < min(k, len(pool)):
        dist[np.isin(pool, chosen)] = -1
        j = int(np.argmax(dist))
        chosen.append(int(pool[j]))
        dist = np.minimum(dist, np.linalg.norm(f[pool] - f[pool[j]], axis=1))
    return np.asarray(chosen, int)


class AnswerSession:
    """Prompts, the tomograms segmented for them and their candidates: asks, adapts, picks (the API of
    ``cryopick ask3d`` and the app's tomogram view).

    ``settings``: picking settings as for ``pick3d`` (their ``refine`` is used for segmenting;
    default: the model's recommended settings); ``candidate_threshold``: map threshold of the
    candidates (default: half the settings' threshold, for more recall); ``overrides``: settings keys
    replaced in each (as for ``pick3d``)."""

    def __init__(self, prompts: Sequence[Prompt], model=None, settings=None, *, overrides: dict | None = None,
                 candidate_threshold: float | None = None,
                 stride: int = 32, window: int = 64, batch_size: int = 4, bf16: bool | None = None,
                 device: str | None = None, progress: bool = True) -> None:
        self.prompts = list(prompts)
        check_prompts(self.prompts)
        for p in self.prompts:
            if p.diameter is None:
                raise CryopickError(f"prompt {p.label!r} has no particle diameter; remake it with --diameter")
        self.picker = TomogramPicker(model, stride=stride, window=window, batch_size=batch_size, bf16=bf16,
                                     device=device, progress=progress)
        self.settings = resolve_settings(self.picker.model, settings, len(self.prompts), overrides,
                                         prompt=self.prompts[0])
        self.candidate_threshold = [s.threshold / 2 if candidate_threshold is None else candidate_threshold
                                    for s in self.settings]
        self.pools: dict[tuple[str, str], CandidateSet] = {}
        self.frames: dict[str, tuple] = {}  # tomogram name -> (working tomogram, maps, path)
        self.adapted: dict[str, AdaptedModel] = {}
        self._tables: dict[tuple[str, int], tuple] = {}  # (tomogram, prompt index) -> component_table
        self.measured = False  # features measured at new positions since the tomogram was added
        self._codes: dict[str, np.ndarray] = {}  # label -> the prompt's code
        self.guard = True  # keep an adapted model only where it beats the settings on the answers (leave-one-out)
        self.guard_options: dict = {}  # adapt_or_keep's min_positives / margin_factor (default: theirs)

    @property
    def model(self):
        return self.picker.model

    def add_tomogram(self, tomogram, pools: dict[str, CandidateSet] | None = None) -> str:
        """Segment ``tomogram`` (path or Image) for every prompt and find its candidates; ``pools``:
        candidates of an earlier round (skips the segmentation until features are needed elsewhere)."""
        self.picker.set_tomogram(tomogram)
        image = self.picker.image
        work = self.picker.working(self.prompts[0])
        if pools is not None and all(p.label in pools for p in self.prompts):
            self.frames[image.name] = (work, None, image.path)
            self.pools.update({(image.name, lab): c for lab, c in pools.items()})
            return image.name
        prob, _ = self.picker.segment(self.prompts, [s.refine for s in self.settings])
        self.frames[image.name] = (work, prob, image.path)
        examples = [work.to_working(q.positions) for q in self.prompts if q.tomogram == image.name]
        coords = [find_candidates(prob[k], p.diameter, self.candidate_threshold[k]) for k, p in enumerate(self.prompts)]
        # Every prompt's features at every prompt's candidates and examples: an answer about one class
        # labels the others too, and later rounds (candidates from the cache, no map) must find them.
        # The sub-volumes are encoded once; only the map features are per prompt.
        union = np.concatenate(coords + examples).reshape(-1, 3)
        emb, proto = encode_positions(self.model, work.volume, union, bf16=self.picker.bf16)
        ends = np.cumsum([0] + [len(c) for c in coords])
        for k, p in enumerate(self.prompts):
            table = self._tables[(image.name, k)] = component_table(prob[k], self.candidate_threshold[k])
            base = base_features(prob[k], union, p.diameter, self.candidate_threshold[k], table)
            own = np.arange(ends[k], ends[k + 1])
            for key, rows in ((p.label, own), (p.label + EXAMPLES, np.setdiff1d(np.arange(len(union)), own))):
                self.pools[(image.name, key)] = CandidateSet(p.label, image.name, union[rows], base[rows], emb[rows],
                                                             proto[rows], float(p.diameter))
        log.info("%s: %s", image.name, ", ".join(f"{len(self.pools[(image.name, p.label)])} candidates of {p.label}"
                                               for p in self.prompts))
        return image.name

    def saved_pools(self, name: str) -> dict[str, CandidateSet]:
        """Candidates (and features at the prompts' examples) of tomogram ``name``, for :meth:`add_tomogram`."""
        return {key: c for (tomo, key), c in self.pools.items() if tomo == name}

    def _features_at(self, name: str, k: int, coords: np.ndarray) -> CandidateSet:
        """Candidate features at working-voxel ``coords`` of tomogram ``name`` for prompt ``k``: the rows
        of its candidates or the prompts' examples within two voxels, else measured on the map."""
        p = self.prompts[k]
        known = [c for c in (self.pools[(name, p.label)], self.pools.get((name, p.label + EXAMPLES))) if c is not None]
        known = CandidateSet.join(known)
        coords = np.asarray(coords, float).reshape(-1, 3)
        if len(known) and len(coords):
            d = np.linalg.norm(coords[:, None] - known.coords[None], axis=2)
            if (d.min(1) <= 2.0).all():
                return known.subset(d.argmin(1))
        work, prob, path = self.frames[name]
        if prob is None:  # candidates from an earlier round; segment again for these positions
            self.add_tomogram(path)
            work, prob, _ = self.frames[name]
        new = CandidateSet.at(self.model, work.volume, prob[k], coords, label=p.label, tomogram=name,
                              diameter=p.diameter, threshold=self.candidate_threshold[k], bf16=self.picker.bf16,
                              table=self._tables.get((name, k)))
        self.pools[(name, p.label + EXAMPLES)] = CandidateSet.join([c for c in (self.pools.get(
            (name, p.label + EXAMPLES)), new) if c is not None])  # measured once: later rounds find them
        self.measured = True
        return new

    def labelled(self, answers: Answers | None, k: int) -> tuple[list[CandidateSet], np.ndarray]:
        """Labelled candidates of prompt ``k`` over the session's tomograms: answers and the prompts'
        own examples (own: positive; other prompts': negative) and their targets."""
        label = self.prompts[k].label
        sets, ys = [], []
        for name, (work, _, _) in self.frames.items():
            coords, y = [], []
            for j, q in enumerate(self.prompts):
                if q.tomogram == name:
                    coords.append(work.to_working(q.positions))
                    y.append(np.full(len(q.positions), int(j == k)))
            if answers is not None and len(answers):
                a = Answers(answers.table[answers.table["tomogram"] == name])
                t = a.targets(label)
                coords.append(work.to_working(a.coords())[t >= 0])
                y.append(t[t >= 0])
            if not coords or not sum(len(c) for c in coords):
                continue
            coords, y = np.concatenate(coords), np.concatenate(y)
            sets.append(self._features_at(name, k, coords))
            ys.append(y)
        return sets, (np.concatenate(ys) if ys else np.zeros(0, int))

    def adapt(self, answers: Answers | None = None) -> dict[str, AdaptedModel]:
        """Fit every prompt's :class:`AdaptedModel` from ``answers`` (and the prompts' examples)."""
        out = {}
        for k, (p, s) in enumerate(zip(self.prompts, self.settings)):
            pools = [c for (name, key), c in self.pools.items() if key == p.label]
            if not pools:
                raise CryopickError("add a tomogram to the session before adapting")
            sets, y = self.labelled(answers, k)
            labelled = CandidateSet.join(sets) if sets else pools[0].subset(slice(0, 0))
            if len(sets) > 1:
                labelled.tomogram = ""
            t0 = time.perf_counter()
            if p.label not in self._codes:  # the prompt's code, once: encoding it is most of a round's time
                self._codes[p.label] = prompt_embedding(self.model, p).detach().float().numpy()
            out[p.label] = adapt_or_keep(self.model, p, CandidateSet.join(pools), labelled, y, settings=s,
                                         candidate_threshold=self.candidate_threshold[k], min_distance=s.min_distance,
                                         code=self._codes[p.label], guard=self.guard, **self.guard_options,
                                         n_examples=sum(len(q.positions) for q in self.prompts if q.tomogram in self.frames))
            out[p.label].info.update({"seconds": round(time.perf_counter() - t0, 3), "refine": s.refine})
        self.adapted = out
        return out

    def ask(self, k: int, answers: Answers | None = None, tomogram: str | None = None, seed: int = 0) -> Answers:
        """``k`` new questions per prompt in ``tomogram`` (default: the last added), as unanswered rows."""
        name = tomogram or list(self.frames)[-1]
        adapted = self.adapt(answers)
        work, _, path = self.frames[name]
        rows = []
        for j, p in enumerate(self.prompts):
            pool, am = self.pools[(name, p.label)], adapted[p.label]
            if not len(pool):
                continue
            prob = am.predict(pool)
            feats = (am.features(pool) - am.mean) / am.scale
            known = np.zeros(len(pool), bool)
            asked = np.zeros((0, 3))
            if answers is not None and len(answers):
                mine = answers.table[(answers.table["tomogram"] == name) & (answers.table["label"] == p.label)]
                asked = work.to_working(mine[["x", "y", "z"]].to_numpy(float).reshape(-1, 3))
            asked = np.concatenate([asked, work.to_working(p.positions) if p.tomogram == name else np.zeros((0, 3))])
            if len(asked):
                d = np.linalg.norm(pool.coords[:, None] - asked[None], axis=2)
                known = d.min(1) <= p.diameter / 2
            pick = choose_questions(prob, feats, k, threshold=am.threshold, exclude=known,
                                    answered=feats[known], seed=seed)
            xyz = work.to_original(pool.coords[pick]) if len(pick) else np.zeros((0, 3))
            rows += [{"tomogram": name, "label": p.label, "x": round(float(c[0]), 1), "y": round(float(c[1]), 1),
                      "z": round(float(c[2]), 1), "answer": "", "p": float(prob[i]), "image": "",
                      "path": str(path or "")} for c, i in zip(xyz, pick)]
        return Answers(pd.DataFrame(rows)) if rows else Answers()


# -- the command-line workflows ------------------------------------------------------------------------------------
def ask_tomogram(prompts: Sequence[Prompt | str | os.PathLike], tomogram: str | os.PathLike, k: int = 10,
                 output_dir: str | os.PathLike = "questions", *, answers=(), model=None, settings=None,
                 candidate_threshold: float | None = None, seed: int = 0, montage: bool = True, stride: int = 32,
                 window: int = 64, batch_size: int = 4, bf16: bool | None = None, device: str | None = None,
                 progress: bool = True) -> dict:
    """One round of ``cryopick ask3d``: ``k`` new questions per prompt about ``tomogram``.

    ``output_dir/answers.csv`` keeps every question (new ones with an empty ``answer``); the answers
    given there so far (and in the ``answers`` files) adapt the classifier that chooses the next
    questions, and are saved as ``output_dir/<label>.adapted.npz`` (for ``pick3d --adapted``) once a
    class has a yes and a no.
    ``output_dir/images/<label>/qNNNN.png`` shows each question (three orthogonal slices through it).
    The candidates are kept in ``output_dir/.cryopick/`` so that the next round skips segmenting.
    Returns a summary (counts, files, seconds)."""
    t0 = time.perf_counter()
    prompts = [p if isinstance(p, Prompt) else load_prompt(p) for p in prompts]
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise CryopickError(f"{out}: exists and is not a folder; give a folder for the questions (-o)")
    csv_path = out / "answers.csv"
    table = Answers.read(csv_path) if csv_path.is_file() else Answers()
    extra = read_answers(answers) if answers else Answers()
    session = AnswerSession(prompts, model, settings, candidate_threshold=candidate_threshold, stride=stride,
                            window=window, batch_size=batch_size, bf16=bf16, device=device, progress=progress)
    fingerprint = _pool_fingerprint(session, tomogram)
    cache = out / ".cryopick" / "candidates.npz"
    name = session.add_tomogram(tomogram, pools=_load_pools(cache, fingerprint))
    make_output_dir(out)  # created once the inputs are known to be good
    t1 = time.perf_counter()
    new = session.ask(k, table.concat(extra), tomogram=name, seed=seed + len(table))
    seconds_round = time.perf_counter() - t1
    if session.frames[name][1] is not None or session.measured:
        _save_pools(cache, session.saved_pools(name), fingerprint)
    if montage and len(new):
        image = session.picker.image
        for i, row in new.table.iterrows():
            rel = Path("images") / row["label"] / f"q{len(table) + i + 1:04d}.png"
            d = next(p.diameter * p.binning for p in prompts if p.label == row["label"])
            write_question_png(image, (row["x"], row["y"], row["z"]), d, out / rel,
                               title=f"{row['label']}? q{len(table) + i + 1} (p = {row['p']:.2f})")
            new.table.loc[i, "image"] = str(rel)
    table = table.concat(new)
    table.write(csv_path)
    files = [str(a.save(out / f"{label}.adapted.npz")) for label, a in session.adapted.items() if a.fitted]
    for label in [label for label, a in session.adapted.items() if not a.fitted]:  # fell back: no stale model
        (out / f"{label}.adapted.npz").unlink(missing_ok=True)
    done = table.answered().table
    return {"tomogram": name, "n_new": len(new), "n_questions": len(table), "n_answered": len(done),
            "answers": {p.label: done[done["label"] == p.label]["answer"].value_counts().to_dict() for p in prompts},
            "answers_csv": str(csv_path), "adapted": files, "seconds_round": round(seconds_round, 2),
            "expected": expected_line(session.adapted),
            "seconds": round(time.perf_counter() - t0, 2)}


def pick_with_answers(tomograms, prompts: Sequence[Prompt | str | os.PathLike], model=None, settings=None,
                      output_dir: str | os.PathLike = "picks", formats=("relion5",), *, answers=(), adapted=(),
                      stride: int = 32, window: int = 64, batch_size: int = 4, bf16: bool | None = None,
                      device: str | None = None, progress: bool = True, **options) -> dict:
    """``cryopick pick3d --answers/--adapted``: adapt the prompts to the answers (answers files or
    folders; their tomograms are found among ``tomograms`` by name, else at the ``path`` column), or
    load adapted models (``.adapted.npz`` files), save them in ``output_dir/adapted/`` and pick every
    tomogram with them (:func:`~cryopick.picker3d.batch.pick_tomograms`, ``options`` passed on)."""
    from cryopick.distribute import check_options
    from cryopick.io.images import image_name, list_images
    from cryopick.picker3d.batch import pick_tomograms

    check_options(options.get("dask"), options.get("cluster"), options.get("cluster_config"))
    prompts = [p if isinstance(p, Prompt) else load_prompt(p) for p in prompts]
    labels = [p.label for p in prompts]
    learned: dict[str, AdaptedModel] = {}
    for path in [adapted] if isinstance(adapted, (str, os.PathLike)) else list(adapted):
        a = AdaptedModel.load(path)
        if a.label not in labels:
            raise CryopickError(f"{path}: adapted model of class {a.label!r}, but no --prompt has that label "
                                f"({', '.join(labels)}); give the prompt it was made with")
        learned[a.label] = a
    session = AnswerSession(prompts, model, settings, overrides=options.get("overrides"), stride=stride,
                            window=window, batch_size=batch_size, bf16=bf16, device=device, progress=progress)
    if answers:
        table = read_answers(answers).answered()
        if not len(table):
            raise CryopickError(f"{', '.join(map(str, _as_list(answers)))}: no answered question yet; fill the "
                                "`answer` column (yes, no or a class label)")
        listed = {image_name(p): p for p in list_images(tomograms if isinstance(tomograms, (str, os.PathLike))
                                                        else list(tomograms))}
        for name in dict.fromkeys(table.table["tomogram"]):
            paths = [listed.get(name)] + [Path(p) for p in table.table[table.table["tomogram"] == name]["path"] if p]
            found = next((p for p in paths if p is not None and Path(p).exists()), None)
            if found is None:
                raise CryopickError(f"answers about tomogram {name!r}, which is neither among --tomograms nor at "
                                    "the answers' path; give it with --tomograms")
            session.add_tomogram(found)
        both = sorted(set(learned) & set(labels))
        if both:
            raise CryopickError(f"class(es) {', '.join(both)} given both --answers and --adapted; give one of them")
        learned.update(session.adapt(table))
        # where the user answered (and clicked the prompts), that is the truth
        options["known"] = answers_as_truth(table, labels, prompts)
    expected = expected_line({label: a for label, a in learned.items() if "expected" in a.info})
    for label in [label for label, a in learned.items() if not a.fitted]:
        log.warning("%s: picked with its settings, not adapted (%s)", label, learned.pop(label).info.get(
            "fallback", "no yes and no no answer yet"))
    for label, a in learned.items():
        a.save(make_output_dir(output_dir) / "adapted" / f"{label}.adapted.npz")
        log.info("%s: adapted to %d yes / %d no answer(s), threshold %.2f", label, a.info.get("n_positive", 0),
                 a.info.get("n_negative", 0), a.threshold)
    # On Dask the workers load the model from its file (the answers adapt classifiers, not the weights).
    distributed = options.get("dask") or options.get("cluster")
    summary = pick_tomograms(tomograms, prompts, model if distributed else session.model, settings, output_dir,
                             formats, stride=stride,
                             window=window, batch_size=batch_size, bf16=bf16, progress=progress,
                             adapted=learned, **options)
    return {**summary, "expected": expected}


def _as_list(x) -> list:
    return [x] if isinstance(x, (str, os.PathLike)) else list(x)
def _pool_fingerprint(session: AnswerSession, tomogram) -> dict:
    from dataclasses import asdict

    from cryopick.picker3d.card import model_fingerprint
    from cryopick.picker3d.prompt import prompt_fingerprint

    path = Path(getattr(tomogram, "path", tomogram))
    stat = path.stat() if path.exists() else None
    return {"model": model_fingerprint(session.model), "prompts": [prompt_fingerprint(p) for p in session.prompts],
            "settings": [asdict(s) for s in session.settings], "candidate_threshold": session.candidate_threshold,
            "tomogram": [str(path.resolve()), stat.st_size if stat else None, stat.st_mtime_ns if stat else None],
            "stride": session.picker.stride, "window": session.picker.window}


def _save_pools(path: Path, pools: dict[str, CandidateSet], fingerprint: dict) -> None:
    import io
    import json

    from cryopick.io.atomic import write_bytes
    from cryopick.io.jsonutil import dumps

    arrays = {f"{i}_{k}": getattr(c, k) for i, c in enumerate(pools.values())
              for k in ("coords", "base", "embedding", "prototypes")}
    meta = [{"key": key, "label": c.label, "tomogram": c.tomogram, "diameter": c.diameter} for key, c in pools.items()]
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), fingerprint=np.array(dumps(fingerprint)), **arrays)
    write_bytes(path, buf.getvalue())


def _load_pools(path: Path, fingerprint: dict) -> dict[str, CandidateSet] | None:
    """Candidates of an earlier round made with the same model, prompts, settings and tomogram, else None."""
    import json

    from cryopick.io.jsonutil import dumps

    try:
        with np.load(path, allow_pickle=False) as data:
            if json.loads(str(data["fingerprint"])) != json.loads(dumps(fingerprint)):
                return None
            meta = json.loads(str(data["meta"]))
            return {m["key"]: CandidateSet(m["label"], m["tomogram"], *(np.asarray(data[f"{i}_{k}"]) for k in
                    ("coords", "base", "embedding", "prototypes")), m["diameter"]) for i, m in enumerate(meta)}
    except Exception:  # absent, damaged or foreign: segment again
        return None
