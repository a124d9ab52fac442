"""Seconds per training step and peak memory of the CryoFSL (SAM2 + adapters) picker.

Each (model, variant) runs in its own subprocess so that its peak resident memory can be read
from ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` inside it (the maximum RSS of that process: model
weights + activations + optimizer state + allocator overhead; tracemalloc does not see PyTorch's
C++ allocations, so it is not used). A step is forward + balanced BCE loss + backward + Adam on
the trainable parameters (adapters + mask decoder), on random weights and a synthetic micrograph
with disk labels. The first step (allocator warm-up) is reported separately.

Variants: ``fp32`` (plain), ``ckpt`` (activation checkpointing of Hiera blocks), ``bf16``
(autocast bfloat16), ``bf16+ckpt``.

Example (this machine's CPU; measurements are appended to --cache and finished runs are skipped;
``--quick`` measures only Hiera-tiny, bf16 + checkpointing, at 512²)::

    python benchmarks/bench_sam2.py --models sam2.1-hiera-tiny sam2.1-hiera-large \
        --variants fp32 ckpt bf16+ckpt --size 1024 --batch 1 --steps 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import add_common_args, print_table, write_result  # noqa: E402

VARIANTS = {"fp32": {}, "ckpt": {"activation_checkpointing": True}, "bf16": {"bf16": True},
            "bf16+ckpt": {"bf16": True, "activation_checkpointing": True}}


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def child(model_name: str, variant: str, size: int, batch: int, steps: int, threads: int, device: str) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    from cryopick.models.registry import build_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model(model_name, image_size=size, **VARIANTS[variant]).to(device).train()
    rss_model = _rss_gb()
    params = model.trainable_parameters()
    opt = torch.optim.Adam(params, lr=1e-4)
    x = torch.randn(batch, 1, size, size, device=device)
    yy, xx = np.mgrid[:size, :size]
    target = np.zeros((size, size), np.float32)
    rng = np.random.default_rng(0)
    for cy, cx in rng.uniform(0, size, (40, 2)):
        target[(yy - cy) ** 2 + (xx - cx) ** 2 < (size / 40) ** 2] = 1
    y = torch.from_numpy(target)[None, None].expand(batch, 1, size, size).to(device)
    pos_weight = (y.numel() - y.sum()) / y.sum().clamp(min=1)
    times = []
    for _ in range(steps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out = {
        "model": model_name, "variant": variant, "size": size, "batch": batch, "steps": steps,
        "threads": threads, "device": device, "torch": torch.__version__,
        "first_step_s": round(times[0], 3),
        "step_s": round(float(np.median(times[1:])) if len(times) > 1 else times[0], 3),
        "rss_after_build_gb": round(rss_model, 3),
        "peak_rss_gb": round(_rss_gb(), 3),
        "memory_metric": "resource.getrusage(RUSAGE_SELF).ru_maxrss of the benchmark subprocess (peak RSS)",
        "trainable_params": int(sum(p.numel() for p in params)),
        "loss": round(float(loss), 5),
    }
    if device.startswith("cuda"):
        out["cuda_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", nargs="+", default=["sam2.1-hiera-tiny", "sam2.1-hiera-large"])
    p.add_argument("--variants", nargs="+", default=["fp32", "ckpt"], choices=list(VARIANTS))
    p.add_argument("--size", type=int, default=1024, help="working image size in pixels")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="training steps per run (first is warm-up)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--cache", default="benchmarks/results/sam2_bench.json",
                   help="every measurement made so far (finished runs are skipped)")
    add_common_args(p, "benchmarks/results/sam2.json")
    p.add_argument("--force", action="store_true", help="rerun finished measurements")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:  # run_all's size: the smallest model, one memory-saving variant, 512², 2 steps
        args.models, args.variants, args.size, args.steps = ["sam2.1-hiera-tiny"], ["bf16+ckpt"], 512, 2

    if args.child:
        res = child(args.child[0], args.child[1], args.size, args.batch, args.steps, args.threads, args.device)
        print("RESULT " + json.dumps(res), flush=True)
        return 0

    from cryopick.io.atomic import write_text

    out = Path(args.cache)
    results = json.loads(out.read_text()) if out.is_file() else []
    measured = []
    for model in args.models:
        for variant in args.variants:
            key = dict(model=model, variant=variant, size=args.size, batch=args.batch, steps=args.steps,
                       threads=args.threads, device=args.device)
            if not args.force and any(all(r.get(k) == v for k, v in key.items()) for r in results):
                print(f"skip {model} {variant} (done)")
                measured += [r for r in results if all(r.get(k) == v for k, v in key.items())]
                continue
            cmd = [sys.executable, __file__, "--child", model, variant, "--size", str(args.size),
                   "--batch", str(args.batch), "--steps", str(args.steps), "--threads", str(args.threads),
                   "--device", args.device]
            env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode or not line:
                print(f"FAILED {model} {variant} (rc {proc.returncode}):\n{proc.stderr[-2000:]}", file=sys.stderr)
                continue
            res = json.loads(line[0][7:])
            results = [r for r in results if not all(r.get(k) == v for k, v in key.items())] + [res]
            write_text(out, json.dumps(results, indent=1) + "\n")
            measured.append(res)
            print(f"{model:22s} {variant:10s} {args.size}² b{args.batch}: {res['step_s']:8.2f} s/step "
                  f"(first {res['first_step_s']:.2f} s), peak RSS {res['peak_rss_gb']} GB", flush=True)
    if not measured:
        return 1
    summary = {}
    for r in measured:
        tag = f"{r['model']}_{r['variant']}_{r['size']}"
        summary[f"{tag}_s_per_step"] = r["step_s"]
        summary[f"{tag}_peak_rss_gb"] = r["peak_rss_gb"]
    write_result(args.out, "sam2", args.quick, summary, runs=measured)
    print_table(measured, ["model", "variant", "size", "batch", "step_s", "first_step_s", "peak_rss_gb"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
