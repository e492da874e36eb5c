"""Decode steps on torch's OpenMP team (`deltanet._native.omp_team`) give the bits they give without
it (DELTANET_OMP_TEAM=0), for the delta rule and the conv update."""

import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

import deltanet  # noqa: E402

_SCRIPT = r"""
import sys, torch, deltanet
torch.manual_seed(3)
B, H, HV, K, V, dim, W = 4, 2, 4, 32, 48, 96, 4
state = torch.randn(B, HV, K, V)
conv_state = torch.randn(B, dim, W)
weight, bias = torch.randn(dim, W), torch.randn(dim)
outs = []
for _ in range(3):
    for _ in range(64):  # the team is looked for on one call in 64 until found
        deltanet._native.omp_team()
    q, k = torch.randn(B, 1, H, K), torch.randn(B, 1, H, K)
    v = torch.randn(B, 1, HV, V)
    g, beta = -torch.rand(B, 1, HV), torch.rand(B, 1, HV)
    o, _ = deltanet.fused_recurrent_gated_delta_rule(
        q, k, v, g=g, beta=beta, initial_state=state, output_final_state=True,
        use_qk_l2norm_in_kernel=True, inplace_final_state=True)
    x = torch.randn(B, dim)
    y = deltanet.causal_conv1d_update(x, conv_state, weight, bias, activation="silu")
    outs += [o.flatten(), y.flatten()]
outs += [state.flatten(), conv_state.flatten()]
sys.stdout.write(("team " if deltanet._native.omp_team() else "alone ") + torch.cat(outs).numpy().tobytes().hex())
"""


def _run(team: str) -> str:
    env = dict(os.environ, DELTANET_OMP_TEAM=team)
    r = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="skipped: torch's OpenMP runtime is looked up on Linux")


@linux_only
def test_torch_team_gives_the_calling_threads_bits():
    alone, team = _run("0"), _run("1")
    assert alone.startswith("alone "), alone[:40]
    assert team.startswith("team "), team[:40]
    assert alone.split()[1] == team.split()[1]


@linux_only
def test_omp_team_is_found_once_torch_is_loaded():
    assert any(deltanet._native.omp_team() for _ in range(65))
