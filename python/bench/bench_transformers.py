"""deltanet against transformers' torch path inside a Qwen3.5-0.8B-shaped model on CPU.

A random-weight model with Qwen3.5-0.8B's GDN layer shapes (hidden 1024, 16 key and 16
value heads of 128, conv width 4; fewer layers and a small vocabulary so the run fits a
small machine) runs a prefill of ``--prompt`` tokens and ``--decode`` greedy decode steps
through transformers' own cache, at each batch size, once with transformers' torch kernels
(the path transformers takes on a CPU) and once with ``deltanet.hf.patch_model``. The two
are interleaved (torch, deltanet, torch, deltanet, ...) so that a ratio survives a noisy
machine; the figures are medians over ``--reps``.

Printed per batch size and phase:

* ``kernels``: time inside the four functions deltanet replaces (conv, delta rule);
* ``GDN layers``: time inside the ``Qwen3_5GatedDeltaNet`` modules (projections, gate,
  gated RMSNorm and the kernels);
* ``end to end``: tokens/s of the whole model forward (all layers, lm_head).

With ``--bound``, a third path per repetition measures what bounds decode: deltanet's kernels,
with each recurrent call preceded by an in-place read-modify-write of the layer's recurrent
state (``state.mul_(1.0)``, torch's threads, the state as cold as the kernel finds it). That
time plus deltanet's conv time is the least a kernel that reads and writes its state once
can take at that point of the model; torch's kernel time over it is the most any such kernel
could lead torch by.

Usage: ``python python/bench/bench_transformers.py [--batch 1 8] [--prompt 2048] [--decode 64]``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections import defaultdict

import torch
from transformers import DynamicCache, Qwen3_5ForCausalLM, Qwen3_5TextConfig

import deltanet
import deltanet.hf as hf


def make_model(layers: int, vocab: int) -> torch.nn.Module:
    # Qwen3.5-0.8B's shapes (its config.json), with `layers` layers in its 3:1 linear:full pattern.
    types = [("full_attention" if (i + 1) % 4 == 0 else "linear_attention") for i in range(layers)]
    config = Qwen3_5TextConfig(
        vocab_size=vocab,
        hidden_size=1024,
        intermediate_size=3584,
        num_hidden_layers=layers,
        layer_types=types,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=256,
        linear_num_key_heads=16,
        linear_num_value_heads=16,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        linear_conv_kernel_dim=4,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    torch.manual_seed(0)
    return Qwen3_5ForCausalLM(config).float().eval()


class Timers:
    """Accumulated seconds per key; `section` is the key currently being timed (phase)."""

    def __init__(self):
        self.total = defaultdict(float)
        self.section = None

    def add(self, what: str, dt: float):
        if self.section is not None:
            self.total[(self.section, what)] += dt


def timed(fn, timers: Timers, what: str):
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            timers.add(what, time.perf_counter() - t0)

    return wrapper


BOUND = {"on": False}  # the --bound path: an in-place RMW of the state before each recurrent call


def with_state_rmw(fn, timers: Timers):
    """``fn`` (a recurrent kernel) preceded, on the --bound path, by a timed in-place RMW of its state."""

    def wrapper(*args, **kwargs):
        state = kwargs.get("initial_state")
        if BOUND["on"] and state is not None:
            t0 = time.perf_counter()
            state.mul_(1.0)
            timers.add("state_rmw", time.perf_counter() - t0)
        return fn(*args, **kwargs)

    return wrapper


def install_timers(model, timers: Timers):
    """Times every GDN layer's forward (hooks) and the kernels it calls (wrapped by name)."""
    for layer in hf.gdn_layers(model):
        starts = []
        layer.register_forward_pre_hook(lambda m, a, kw=None, s=starts: s.append(time.perf_counter()), with_kwargs=False)
        layer.register_forward_hook(lambda m, a, out, s=starts: timers.add("gdn", time.perf_counter() - s.pop()))
    original = hf._kernels_for

    def kernels_for(cls, kernels):
        given = original(cls, kernels)
        wrapped = {name: timed(fn, timers, "kernels") for name, fn in given.items()}
        recurrent = "torch_recurrent_gated_delta_rule"  # also timed alone: the conv's time is the rest
        wrapped[recurrent] = with_state_rmw(timed(timed(given[recurrent], timers, "recurrent"), timers, "kernels"), timers)
        return wrapped

    hf._kernels_for = kernels_for
    hf._patched_forward.cache_clear()


def run_once(model, input_ids: torch.Tensor, decode: int, timers: Timers, label: str) -> torch.Tensor:
    cache = DynamicCache(config=model.config)
    with torch.inference_mode():
        timers.section = (label, "prefill")
        t0 = time.perf_counter()
        out = model(input_ids=input_ids, cache=cache, use_cache=True)
        timers.add("e2e", time.perf_counter() - t0)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [token]
        timers.section = (label, "decode")
        for _ in range(decode):
            t0 = time.perf_counter()
            out = model(input_ids=token, cache=cache, use_cache=True)
            timers.add("e2e", time.perf_counter() - t0)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(token)
        timers.section = None
    return torch.cat(tokens, dim=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--prompt", type=int, default=2048)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4, help="model layers (3 of every 4 are GDN layers)")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=3, help="interleaved repetitions per path")
    ap.add_argument("--bound", action="store_true", help="also measure the state read-modify-write bound of decode")
    args = ap.parse_args()

    threads = torch.get_num_threads()
    model = make_model(args.layers, args.vocab)
    n_gdn = len(hf.gdn_layers(model))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    print(f"machine: {cpu}, {os.cpu_count()} CPUs; torch {torch.__version__} with {threads} threads; "
          f"deltanet {deltanet.__version__} (RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', 'unset: all CPUs')})")
    print(f"model: Qwen3.5-0.8B GDN shapes (hidden 1024, HK 16 HV 16 K 128 V 128, W 4), {args.layers} layers "
          f"({n_gdn} GDN), vocab {args.vocab}, f32; prefill {args.prompt} tokens + {args.decode} decode steps; "
          f"medians of {args.reps} interleaved repetitions")
    timers = Timers()
    install_timers(model, timers)
    rows, bounds = [], []
    for batch in args.batch:
        gen = torch.Generator().manual_seed(batch)
        ids = torch.randint(1, args.vocab, (batch, args.prompt), generator=gen)
        per = defaultdict(list)  # (path, phase, what) -> seconds per repetition
        outputs = {}
        for rep in range(args.reps):
            for path in ("torch", "deltanet", "bound") if args.bound else ("torch", "deltanet"):
                BOUND["on"] = path == "bound"
                hf.patch_model(model, kernels="deltanet" if path == "bound" else path)
                timers.total.clear()
                outputs[path] = run_once(model, ids, args.decode, timers, path)
                for (section, what), secs in timers.total.items():
                    per[(section[0], section[1], what)].append(secs)
        same = torch.equal(outputs["torch"], outputs["deltanet"])
        for phase, tokens in (("prefill", batch * args.prompt), ("decode", batch * args.decode)):
            med = {key: statistics.median(v) for key, v in per.items() if key[1] == phase}
            for what, name in (("kernels", "kernels"), ("gdn", "GDN layers"), ("e2e", "end to end")):
                t_torch, t_dn = med[("torch", phase, what)], med[("deltanet", phase, what)]
                rows.append((batch, phase, name, tokens / t_torch, tokens / t_dn, t_torch / t_dn))
        rows.append((batch, "tokens", "identical" if same else "DIFFER", None, None, None))
        if args.bound:
            med = {key: statistics.median(v) for key, v in per.items() if key[1] == "decode"}
            rmw, conv_dn = med[("bound", "decode", "state_rmw")], med[("deltanet", "decode", "kernels")] - med[("deltanet", "decode", "recurrent")]
            steps = args.decode * n_gdn
            bounds.append((batch, 1e6 * rmw / steps, 1e6 * conv_dn / steps, med[("torch", "decode", "kernels")] / (rmw + conv_dn)))
    print()
    print("| batch | phase | time in | torch tokens/s | deltanet tokens/s | deltanet / torch |")
    print("|---:|---|---|---:|---:|---:|")
    for batch, phase, name, a, b, r in rows:
        if a is None:
            print(f"| {batch} | greedy tokens | {name} | | | |")
        else:
            print(f"| {batch} | {phase} | {name} | {a:,.0f} | {b:,.0f} | {r:.2f}x |")
    if bounds:
        print()
        print("| batch | state RMW per layer step (cold, in the model) | deltanet conv per layer step | torch kernels / (RMW + conv): the most a one-pass kernel can lead |")
        print("|---:|---:|---:|---:|")
        for batch, rmw_us, conv_us, most in bounds:
            print(f"| {batch} | {rmw_us:.0f} us | {conv_us:.0f} us | {most:.2f}x |")


if __name__ == "__main__":
    main()
