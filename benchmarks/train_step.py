"""Training-step throughput of the VideoDiT presets, against the device's own matmul rate.

For each preset, one training step (forward, backward, AdamW step; bf16 autocast on GPU, fp32 on CPU)
on random latents of the given shape is timed after warm-up. The model FLOPs of a step are counted
analytically (`training.model.flops_per_sample`: linear layers and attention, backward = 2x forward,
plus one forward more with activation checkpointing), so the table gives tokens/s, samples/s, the
achieved TFLOP/s and two ratios, side by side in one run:

  of matmul  achieved / the rate of a large dense matmul measured here, in the same precision (the floor)
  MFU        achieved / the device's datasheet peak (known GPUs only: dense bf16 without sparsity)

and the peak memory (GPU: allocated by torch; CPU: the process's resident peak so far).

    python benchmarks/train_step.py                                   # CPU: tiny and S at 8x16x16
    python benchmarks/train_step.py --presets S,B --latent 16x32x32 --batch 4   # on a GPU
    python benchmarks/train_step.py --json bench_out/train_step.json  # also write the rows as JSON
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.model import VideoDiT, flops_per_sample, preset  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) from the vendors' datasheets, by device name.
PEAK_BF16_TFLOPS = {
    "H200": 989.4,
    "H100 SXM": 989.4,
    "H100 80GB HBM3": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "GH200": 989.4,
    "B200": 2250.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
    "RTX 4090": 165.2,
}


def datasheet_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_tflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """The measured rate of an n x n dense matmul: what this device does at best in this precision."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e12


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def bench_preset(name: str, args, device: torch.device) -> dict:
    cfg = preset(
        name,
        in_channels=args.channels,
        text_dim=args.text_dim,
        patch=args.patch,
        factorized=args.factorized,
        checkpointing=args.checkpointing,
    )
    model = VideoDiT(cfg).to(device).train()
    step_fn = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    t, h, w = args.latent
    x = torch.randn(args.batch, args.channels, t, h, w, device=device)
    text = torch.randn(args.batch, args.text_len, args.text_dim, device=device)
    mask = torch.ones(args.batch, args.text_len, dtype=torch.bool, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            pred = step_fn(x, torch.rand(args.batch, device=device), text, mask)
            loss = (pred.float() - x).square().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(args.warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    step_s = (time.perf_counter() - start) / args.steps
    grid = model.grid(x.shape)
    tokens = math.prod(grid)
    passes = 4 if args.checkpointing else 3  # forward + 2x backward (+ the recomputed forward)
    flops = passes * flops_per_sample(cfg, grid, args.text_len) * args.batch
    params = sum(p.numel() for p in model.parameters())
    return {
        "preset": name,
        "params_m": params / 1e6,
        "latent": "x".join(map(str, args.latent)),
        "tokens": tokens,
        "batch": args.batch,
        "step_s": step_s,
        "samples_per_s": args.batch / step_s,
        "tokens_per_s": args.batch * tokens / step_s,
        "tflops": flops / step_s / 1e12,
        "peak_mem_gb": peak_memory_gb(device),
    }


def parse_triple(text: str) -> tuple[int, int, int]:
    parts = tuple(int(p) for p in text.lower().split("x"))
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected TxHxW, got {text!r}")
    return parts


def main() -> None:
    cuda = torch.cuda.is_available()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="S,B" if cuda else "tiny,S")
    ap.add_argument(
        "--latent", type=parse_triple, default="16x32x32" if cuda else "8x16x16", help="T x H x W"
    )
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--patch", type=parse_triple, default="1x2x2")
    ap.add_argument("--text-len", type=int, default=128)
    ap.add_argument("--text-dim", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=4 if cuda else 1)
    ap.add_argument("--steps", type=int, default=10 if cuda else 3)
    ap.add_argument("--warmup", type=int, default=3 if cuda else 1)
    ap.add_argument("--factorized", action="store_true")
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--device", default="cuda" if cuda else "cpu")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    floor = matmul_tflops(device, dtype, 8192 if device.type == "cuda" else 2048)
    peak = datasheet_peak(device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"device: {name}; {str(dtype).removeprefix('torch.')} matmul {floor:.2f} TFLOP/s", flush=True)
    rows = []
    for preset_name in args.presets.split(","):
        row = bench_preset(preset_name.strip(), args, device)
        row["of_matmul"] = row["tflops"] / floor
        row["mfu"] = row["tflops"] / peak if peak else None
        rows.append(row)
        print(f"  {row['preset']}: {row['step_s']:.3f} s/step", flush=True)
    print()
    print(
        f"Latents {'x'.join(map(str, args.latent))}x{args.channels}ch, patch {'x'.join(map(str, args.patch))}, "
        f"text {args.text_len}x{args.text_dim}, batch {args.batch}, {str(dtype).removeprefix('torch.')}"
        f"{', factorized' if args.factorized else ''}{', checkpointing' if args.checkpointing else ''}"
        f"{', compiled' if args.compile else ''}; {name}.\n"
    )
    print(
        "| preset | params M | tokens | step s | samples/s | tokens/s | TFLOP/s | of matmul | MFU | peak mem GB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(
            f"| {r['preset']} | {r['params_m']:.1f} | {r['tokens']} | {r['step_s']:.3f} | {r['samples_per_s']:.2f} "
            f"| {r['tokens_per_s']:,.0f} | {r['tflops']:.2f} | {r['of_matmul']:.2f}x | {mfu} | {r['peak_mem_gb']:.2f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"device": name, "matmul_tflops": floor, "peak_tflops": peak}
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
