#!/usr/bin/python3
"""Time one training step of the decoder block of bench_train_step.cpp in PyTorch.

Same block, input, loss and optimizer as the C++ benchmark. Block: width 256, 4 query
heads and 2 key/value heads of 64, SwiGLU FFN of 688, causal attention, pre-RMSNorm,
interleaved RoPE, no SubLN and no q/k norm. Input: 8 sequences of 128 tokens as a fixed
random [1024 x 256] tensor without gradient. Loss: mean(out^2). Optimizer: AdamW with
lr 1e-4 and weight decay 0.01 on the matrices. The ternary variant is the fake-quant BitLinear of the BitNet
training code: x_q = x + (q(x) - x).detach(), w_q likewise, y = linear(x_q, w_q), with
absmax int8 activations per token and absmean ternary weights per tensor.

Run with Debian's Python, which has python3-torch (1.13):
    /usr/bin/python3 bench/pytorch_train_step.py [--steps 30]
It prints the BLAS library that torch loaded and the median step time per variant and
thread count. Each thread count runs in its own process with OMP_NUM_THREADS and
OPENBLAS_NUM_THREADS set to it, because OpenBLAS reads its thread count when it loads and
ignores torch.set_num_threads.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

BATCH, SEQ, DIM, HIDDEN, HEADS, KV_HEADS = 8, 128, 256, 688, 4, 2
HEAD_DIM = DIM // HEADS
NORM_EPS, THETA = 1e-5, 10000.0


def quantize_activations(x):
    """Absmax int8 per token, dequantized: gamma/127 * clamp(round(127 x / gamma), -128, 127)."""
    gamma = x.abs().max(dim=-1, keepdim=True).values.clamp(min=1e-5)
    return (x * (127.0 / gamma)).round().clamp(-128, 127) * (gamma / 127.0)


def quantize_weights(w):
    """Absmean ternary per tensor, dequantized: delta * clamp(round(w / delta), -1, 1)."""
    delta = w.abs().mean().clamp(min=1e-5)
    return (w * (1.0 / delta)).round().clamp(-1, 1) * delta


def projection(x, w, ternary):
    if not ternary:
        return F.linear(x, w)
    x_q = x + (quantize_activations(x) - x).detach()
    w_q = w + (quantize_weights(w) - w).detach()
    return F.linear(x_q, w_q)


def rmsnorm(x, gain):
    return gain * (x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS))


def rope_tables():
    pair = torch.arange(HEAD_DIM // 2, dtype=torch.float32)
    frequency = 1.0 / THETA ** (2.0 * pair / HEAD_DIM)
    angle = torch.arange(SEQ, dtype=torch.float32)[:, None] * frequency[None, :]
    return torch.cos(angle), torch.sin(angle)


def rope(x, heads, cos, sin):
    """Rotate interleaved pairs; x is [batch, seq, heads * head_dim]."""
    pairs = x.reshape(BATCH, SEQ, heads, HEAD_DIM // 2, 2)
    a, b = pairs[..., 0], pairs[..., 1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack((a * c - b * s, a * s + b * c), dim=-1).reshape(BATCH, SEQ, heads * HEAD_DIM)


def block_forward(x, w, ternary, cos, sin, causal):
    n = rmsnorm(x, w["attn_norm"])
    q = rope(projection(n, w["wq"], ternary), HEADS, cos, sin)
    k = rope(projection(n, w["wk"], ternary), KV_HEADS, cos, sin)
    v = projection(n, w["wv"], ternary)
    qh = q.reshape(BATCH, SEQ, HEADS, HEAD_DIM).transpose(1, 2)
    group = HEADS // KV_HEADS
    kh = k.reshape(BATCH, SEQ, KV_HEADS, HEAD_DIM).transpose(1, 2).repeat_interleave(group, dim=1)
    vh = v.reshape(BATCH, SEQ, KV_HEADS, HEAD_DIM).transpose(1, 2).repeat_interleave(group, dim=1)
    scores = (qh @ kh.transpose(-1, -2)) / HEAD_DIM ** 0.5
    scores = scores.masked_fill(~causal, float("-inf"))
    a = (torch.softmax(scores, dim=-1) @ vh).transpose(1, 2).reshape(BATCH, SEQ, DIM)
    h = x + projection(a, w["wo"], ternary)
    n = rmsnorm(h, w["ffn_norm"])
    m = F.silu(projection(n, w["w_gate"], ternary)) * projection(n, w["w_up"], ternary)
    return h + projection(m, w["w_down"], ternary)


def make_weights(generator):
    def matrix(rows, cols):
        return (0.02 * torch.randn(rows, cols, generator=generator)).requires_grad_()

    return {
        "attn_norm": torch.ones(DIM, requires_grad=True),
        "wq": matrix(DIM, DIM),
        "wk": matrix(KV_HEADS * HEAD_DIM, DIM),
        "wv": matrix(KV_HEADS * HEAD_DIM, DIM),
        "wo": matrix(DIM, DIM),
        "ffn_norm": torch.ones(DIM, requires_grad=True),
        "w_gate": matrix(HIDDEN, DIM),
        "w_up": matrix(HIDDEN, DIM),
        "w_down": matrix(DIM, HIDDEN),
    }


def time_steps(ternary, threads, steps):
    """Return the median wall time and the median process CPU time of one step in ms."""
    torch.set_num_threads(threads)
    generator = torch.Generator().manual_seed(42)
    weights = make_weights(generator)
    decayed = [value for value in weights.values() if value.dim() == 2]
    others = [value for value in weights.values() if value.dim() != 2]
    optimizer = torch.optim.AdamW([{"params": decayed, "weight_decay": 0.01},
                                   {"params": others, "weight_decay": 0.0}], lr=1e-4)
    x = torch.randn(BATCH, SEQ, DIM, generator=generator)
    cos, sin = rope_tables()
    causal = torch.tril(torch.ones(SEQ, SEQ, dtype=torch.bool))

    def step():
        optimizer.zero_grad(set_to_none=False)
        loss = block_forward(x, weights, ternary, cos, sin, causal).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    for _ in range(3):
        step()
    wall_times, cpu_times = [], []
    for _ in range(steps):
        wall_start, cpu_start = time.perf_counter(), time.process_time()
        step()
        wall_times.append((time.perf_counter() - wall_start) * 1e3)
        cpu_times.append((time.process_time() - cpu_start) * 1e3)
    return statistics.median(wall_times), statistics.median(cpu_times)


def loaded_blas_libraries():
    """Return the paths of the BLAS shared libraries mapped into this process."""
    torch.randn(64, 64) @ torch.randn(64, 64)
    with open("/proc/self/maps", encoding="utf-8") as maps:
        paths = {line.split()[-1] for line in maps if "blas" in line.lower() and "/" in line}
    return sorted(paths)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant (default 30)")
    parser.add_argument("--variant", choices=("f32", "ternary"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.variant is not None:
        wall, cpu = time_steps(args.variant == "ternary", args.threads, args.steps)
        print(f"pytorch/train_step/{args.variant}/block256/threads:{args.threads}  "
              f"median {wall:.1f} ms wall, {cpu:.1f} ms CPU", flush=True)
        return

    blas_info = re.search(r"BLAS_INFO=(\w+)", torch.__config__.show())
    print(f"torch {torch.__version__}, BLAS_INFO={blas_info.group(1) if blas_info else 'unknown'}")
    print("BLAS libraries loaded:", ", ".join(loaded_blas_libraries()) or "none")
    for variant in ("f32", "ternary"):
        for threads in (1, 2):
            environment = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
            subprocess.run([sys.executable, __file__, "--variant", variant, "--threads", str(threads),
                            "--steps", str(args.steps)], env=environment, check=True)


if __name__ == "__main__":
    main()
