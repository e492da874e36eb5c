"""fla's kernels on the shapes of crates/backend-cuda/examples/bench.rs, for scripts/device-check.sh.

Qwen3.5-35B-A3B GDN shape (HK 16, HV 32, K = V = 128), bf16 inputs, f32 state:
chunk_gated_delta_rule at 1 x 8192, 16 x 2048 and 1 x 4096 tokens (varlen,
q/k repeated to the value heads as transformers does, L2 norm in the kernel),
fused_recurrent_gated_delta_rule for one decode token and for D = 4 tokens
per sequence at batch 1, 16, 64, 256, and torch's device-to-device copy.
Times are host wall clock per call with a synchronisation after each, as the
Rust bench measures. Arguments by keyword (fla 0.6's fused_recurrent takes
gk and gv between g and beta). Prints `FIGURE <name> <value>` lines.
"""
import sys
import time

import torch


def figure(name, value):
    print(f"FIGURE {name} {value}", flush=True)


def timed(fn, reps):
    fn()
    torch.cuda.synchronize()
    total = 0.0
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        total += time.perf_counter() - t
    return total / reps


def inputs(n, t, hk=16, hv=32, k=128, v=128, dev="cuda"):
    g = torch.Generator(device="cpu").manual_seed(17)
    q = torch.randn(1, n * t, hk, k, generator=g).to(dev, torch.bfloat16)
    kk = torch.randn(1, n * t, hk, k, generator=g).to(dev, torch.bfloat16)
    vv = (0.5 * torch.randn(1, n * t, hv, v, generator=g)).to(dev, torch.bfloat16)
    gate = torch.full((1, n * t, hv), -0.05, device=dev, dtype=torch.float32)
    beta = torch.full((1, n * t, hv), 0.6, device=dev, dtype=torch.bfloat16)
    rep = hv // hk
    return q.repeat_interleave(rep, dim=2), kk.repeat_interleave(rep, dim=2), vv, gate, beta


def main():
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule

    print(f"torch {torch.__version__}, device {torch.cuda.get_device_name(0)}", flush=True)
    n_bytes = 1 << 30
    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dt = timed(lambda: dst.copy_(src), 10)
    figure("torch_d2d_copy_gbps", 2 * n_bytes / dt / 1e9)
    del src, dst

    scale = 128 ** -0.5
    for batch in (1, 16, 64, 256):
        for d in (1, 4):
            q, k, v, g, b = inputs(batch, d)
            q, k, v, g, b = (x.reshape(batch, d, *x.shape[2:]) for x in (q, k, v, g, b))
            h0 = torch.zeros(batch, 32, 128, 128, device="cuda", dtype=torch.float32)

            def run():
                fused_recurrent_gated_delta_rule(q, k, v, g=g, beta=b, scale=scale, initial_state=h0, output_final_state=True,
                                                 use_qk_l2norm_in_kernel=True)

            us = timed(run, 50) * 1e6
            figure(f"fla_recurrent_d{d}_b{batch}_us", us)
            print(f"fla fused_recurrent batch {batch:>4}, {d} token(s): {us:9.1f} us", flush=True)

    for n, t in ((1, 8192), (16, 2048), (1, 4096)):
        q, k, v, g, b = inputs(n, t)
        cu = torch.arange(0, (n + 1) * t, t, device="cuda", dtype=torch.long)
        h0 = torch.zeros(n, 32, 128, 128, device="cuda", dtype=torch.float32)

        def run():
            chunk_gated_delta_rule(q, k, v, g=g, beta=b, scale=scale, initial_state=h0, output_final_state=True, cu_seqlens=cu,
                                   use_qk_l2norm_in_kernel=True)

        ms = timed(run, 5) * 1e3
        figure(f"fla_chunk_{n}x{t}_ms", ms)
        print(f"fla chunk {n} x {t}: {ms:9.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
