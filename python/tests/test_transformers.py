"""deltanet inside real transformers models: tiny Qwen3.5 / Qwen3-Next built from transformers'
config classes with random weights (no download), run with ``deltanet.hf.patch_model`` and
compared with transformers' own torch path (``patch_model(model, kernels="torch")``, the code
transformers runs without fla; with fla installed on a CPU machine its Triton kernels cannot run).

Error is measured as fla does: ``rms(x - ref) / rms(ref)``.
"""

from __future__ import annotations

import copy
import functools
import inspect

import pytest
import torch
import transformers.cache_utils as cache_utils
from transformers import DynamicCache, Qwen3_5ForCausalLM, Qwen3_5TextConfig, Qwen3NextConfig, Qwen3NextForCausalLM

import deltanet
import deltanet.hf

F32_TOL = 2e-5
# bf16 models: the bound is relative to transformers' own bf16 path. Both are compared with
# the same model in f32 (transformers' torch path); deltanet in bf16 may be at most 25% further
# from it than transformers' torch code in bf16 is. (With initializer_range 0.1 these tiny
# models amplify bf16 rounding: transformers' own bf16 logits are 4-13% off its f32 logits,
# deltanet's bf16 logits 3-14% off transformers' bf16 logits, so a fixed small bound on
# deltanet-vs-torch in bf16 would measure the model's conditioning, not the kernels.)
BF16_VS_TORCH_BF16 = 1.25

LAYERS = ["linear_attention", "linear_attention", "full_attention", "linear_attention"]

# (architecture, HK, HV, K, V): HV/HK of 1, 2 and 4, one config with K != V.
CONFIGS = {
    "qwen3_5-hv1": ("qwen3_5", 2, 2, 32, 32),
    "qwen3_5-hv2-k16-v32": ("qwen3_5", 2, 4, 16, 32),
    "qwen3_next-hv4": ("qwen3_next", 1, 4, 32, 32),
}


def rms_ratio(x: torch.Tensor, ref: torch.Tensor) -> float:
    x, ref = x.double(), ref.double()
    return ((x - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt()).item()


def make_model(name: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    arch, hk, hv, k, v = CONFIGS[name]
    common = dict(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=len(LAYERS),
        layer_types=LAYERS,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        linear_num_key_heads=hk,
        linear_num_value_heads=hv,
        linear_key_head_dim=k,
        linear_value_head_dim=v,
        linear_conv_kernel_dim=4,
        initializer_range=0.1,  # large enough that the GDN layers visibly move the logits
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,  # greedy generation runs for exactly max_new_tokens
    )
    torch.manual_seed(seed)
    if arch == "qwen3_5":
        model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**common))
    else:
        config = Qwen3NextConfig(
            **common,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=48,
            shared_expert_intermediate_size=48,
        )
        model = Qwen3NextForCausalLM(config)
    return model.to(dtype).eval()


def prompt(length: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (1, length), generator=gen)


@torch.no_grad()
def logits_of(model, ids, kernels: str, **kwargs) -> torch.Tensor:
    deltanet.hf.patch_model(model, kernels)
    return model(ids, **kwargs).logits


@torch.no_grad()
def generate(model, ids, kernels: str, new_tokens: int, **kwargs) -> torch.Tensor:
    deltanet.hf.patch_model(model, kernels)
    out = model.generate(ids, max_new_tokens=new_tokens, do_sample=False, **kwargs)
    return out[:, ids.shape[1] :]


@pytest.fixture
def calls(monkeypatch):
    """Counts calls of deltanet's four fla/causal-conv1d functions (proof the layers ran on them)."""
    counts = dict.fromkeys(
        ["chunk_gated_delta_rule", "fused_recurrent_gated_delta_rule", "causal_conv1d_fn", "causal_conv1d_update"], 0
    )
    for name in counts:
        original = getattr(deltanet, name)

        def counting(*args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(deltanet, name, functools.wraps(original)(counting))
    return counts


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gdn_layers_visibly_move_the_logits(name):
    """Without this, agreement with the reference would say little about the GDN layers."""
    model = make_model(name)
    ids = prompt(80, seed=1)
    ref = logits_of(model, ids, "torch")
    for perturb in ("A_log", "conv1d"):
        other = copy.deepcopy(model)
        with torch.no_grad():
            for layer in deltanet.hf.gdn_layers(other):
                if perturb == "A_log":  # the delta rule's decay
                    layer.A_log.add_(0.5)
                else:  # the short conv
                    layer.conv1d.weight.mul_(0.5)
        moved = rms_ratio(logits_of(other, ids, "torch"), ref)
        assert moved > 1e-2, f"perturbing {perturb} of the GDN layers moved the logits only by {moved:.2e}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_prefill_logits_match_transformers(name, calls):
    model = make_model(name)
    assert deltanet.hf.patch_model(model) == LAYERS.count("linear_attention")
    ids = prompt(150, seed=2)  # two full chunks of 64 and a partial one
    ref = logits_of(model, ids, "torch")
    assert calls["chunk_gated_delta_rule"] == 0
    got = logits_of(model, ids, "deltanet")
    assert calls["chunk_gated_delta_rule"] == 3 and calls["causal_conv1d_fn"] == 3
    assert rms_ratio(got, ref) <= F32_TOL


@pytest.mark.parametrize("name", list(CONFIGS))
def test_greedy_generate_matches_transformers(name, calls):
    model = make_model(name)
    ids = prompt(70, seed=3)
    ref = generate(model, ids, "torch", new_tokens=32)
    got = generate(model, ids, "deltanet", new_tokens=32)
    assert got.tolist() == ref.tolist()
    gdn = LAYERS.count("linear_attention")
    assert calls["chunk_gated_delta_rule"] == gdn and calls["causal_conv1d_fn"] == gdn
    assert calls["fused_recurrent_gated_delta_rule"] == 31 * gdn  # every decode step after the prefill
    assert calls["causal_conv1d_update"] == 31 * gdn


def _cache_states(cache, model):
    layers = [layer.layer_idx for layer in deltanet.hf.gdn_layers(model)]
    return [(cache.get_conv_state(i), cache.get_recurrent_state(i)) for i in layers]


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_prompt_in_pieces_through_the_cache_equals_one_prefill(name):
    """Chunked prefill continuing transformers' cache, at cuts that are not multiples of 64."""
    model = make_model(name)
    deltanet.hf.patch_model(model)
    ids = prompt(37 + 90 + 73, seed=4)
    one_cache = DynamicCache(config=model.config)
    one = model(ids, cache=one_cache, use_cache=True).logits

    cache = DynamicCache(config=model.config)
    pieces, start = [], 0
    for length in (37, 90, 73):
        pieces.append(model(ids[:, start : start + length], cache=cache, use_cache=True).logits)
        start += length
    assert rms_ratio(torch.cat(pieces, dim=1), one) <= F32_TOL
    for (conv, state), (conv_one, state_one) in zip(_cache_states(cache, model), _cache_states(one_cache, model)):
        assert rms_ratio(conv, conv_one) <= F32_TOL  # the last W projected inputs
        assert rms_ratio(state, state_one) <= F32_TOL

    # and the pieces' cache decodes like the one-prefill cache
    nxt = pieces[-1][:, -1:].argmax(-1)
    a = model(nxt, cache=cache, use_cache=True).logits
    b = model(nxt, cache=one_cache, use_cache=True).logits
    assert rms_ratio(a, b) <= F32_TOL


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_batch_of_two_prompts_equals_each_alone(name):
    model = make_model(name)
    deltanet.hf.patch_model(model)
    long, short = prompt(83, seed=5), prompt(45, seed=6)
    pad = long.shape[1] - short.shape[1]
    batch = torch.cat([long, torch.cat([torch.zeros(1, pad, dtype=long.dtype), short], dim=1)])
    mask = torch.ones_like(batch)
    mask[1, :pad] = 0  # left padding, as generate expects

    both = model.generate(batch, attention_mask=mask, max_new_tokens=24, do_sample=False)[:, batch.shape[1] :]
    alone = [model.generate(p, max_new_tokens=24, do_sample=False)[:, p.shape[1] :] for p in (long, short)]
    assert both[0].tolist() == alone[0][0].tolist()
    assert both[1].tolist() == alone[1][0].tolist()

    logits = model(batch, attention_mask=mask).logits
    assert rms_ratio(logits[0], model(long).logits[0]) <= F32_TOL
    assert rms_ratio(logits[1, pad:], model(short).logits[0]) <= F32_TOL


@pytest.mark.parametrize("name", ["qwen3_5-hv2-k16-v32", "qwen3_next-hv4"])
def test_bf16_model_matches_transformers(name):
    ids = prompt(150, seed=7)
    ref_f32 = logits_of(make_model(name), ids, "torch")
    model = make_model(name, dtype=torch.bfloat16)
    torch_bf16 = logits_of(model, ids, "torch")
    got = logits_of(model, ids, "deltanet")
    assert got.dtype == torch.bfloat16
    assert rms_ratio(got, ref_f32) <= BF16_VS_TORCH_BF16 * rms_ratio(torch_bf16, ref_f32)

    if name.startswith("qwen3_5"):  # well-conditioned enough that bf16 greedy decoding is stable
        # decode through the cache in bf16 (conv state bf16, recurrent state f32, as upstream)
        ref_tokens = generate(model, ids[:, :70], "torch", new_tokens=24)
        got_tokens = generate(model, ids[:, :70], "deltanet", new_tokens=24)
        assert got_tokens.tolist() == ref_tokens.tolist()


def test_unpatch_restores_transformers_forward():
    model = make_model("qwen3_5-hv1")
    layers = deltanet.hf.gdn_layers(model)
    assert deltanet.hf.patch_model(model) == len(layers) == 3
    assert all(deltanet.hf.patched_kernels(layer) == "deltanet" for layer in layers)
    assert deltanet.hf.unpatch_model(model) == 3
    assert all(deltanet.hf.patched_kernels(layer) is None for layer in layers)
    assert all("forward" not in vars(layer) for layer in layers)


def test_patch_model_refuses_a_model_without_gdn_layers():
    with pytest.raises(ValueError, match="no Qwen3.5 / Qwen3-Next GatedDeltaNet layer"):
        deltanet.hf.patch_model(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="kernels must be"):
        deltanet.hf.patch_model(make_model("qwen3_5-hv1"), kernels="fla")


@pytest.mark.parametrize("name", ["qwen3_5-hv1", "qwen3_next-hv4"])
def test_decode_runs_in_place_on_the_cached_state(name):
    """After the prefill the cache holds deltanet's own state memory, and decode steps keep it."""
    model = make_model(name)
    deltanet.hf.patch_model(model)
    ids = prompt(40, seed=7)
    cache = DynamicCache(config=model.config)
    gdn = [layer.layer_idx for layer in deltanet.hf.gdn_layers(model)]
    with torch.no_grad():
        out = model(ids, cache=cache, use_cache=True)
        ptrs = [cache.layers[i].recurrent_states[0].data_ptr() for i in gdn]
        token = out.logits[:, -1:].argmax(-1)
        for _ in range(3):
            out = model(token, cache=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        assert [cache.layers[i].recurrent_states[0].data_ptr() for i in gdn] == ptrs


@pytest.mark.parametrize("name", ["qwen3_5-hv1", "qwen3_next-hv4"])
def test_cache_holds_the_state_deltanet_returned(name, monkeypatch):
    """The prefill's final state (deltanet's memory) becomes the cache's state tensor, so decode
    steps advance it in place instead of staging a copy in and out (transformers keys a layer's
    states by index in a dict since 5.x; a list before)."""
    model = make_model(name)
    deltanet.hf.patch_model(model)
    returned = []
    chunk = deltanet.chunk_gated_delta_rule

    def recording_chunk(*args, **kwargs):
        out, state = chunk(*args, **kwargs)
        returned.append(state)
        return out, state

    monkeypatch.setattr(deltanet, "chunk_gated_delta_rule", recording_chunk)
    cache = DynamicCache(config=model.config)
    gdn = [layer.layer_idx for layer in deltanet.hf.gdn_layers(model)]
    with torch.no_grad():
        out = model(prompt(40, seed=3), cache=cache, use_cache=True)
        assert len(returned) == len(gdn)
        assert all(cache.layers[i].recurrent_states[0] is state for i, state in zip(gdn, returned))
        token = out.logits[:, -1:].argmax(-1)
        model(token, cache=cache, use_cache=True)
        assert all(cache.layers[i].recurrent_states[0] is state for i, state in zip(gdn, returned))


def skip_unless_recurrent_states_are_recorded():
    """transformers < 5.25 keeps no recurrent states for `crop` (and refuses assisted decoding of these models)."""
    layer_cls = getattr(cache_utils, "LinearAttentionLayer", None)
    recording = getattr(layer_cls, "activate_past_recording", None)
    if recording is None or "recurrent_states_to_keep" not in inspect.signature(recording).parameters:
        pytest.skip("skipped: this transformers does not record recurrent states for crop (added in 5.25)")


@pytest.mark.parametrize("name", ["qwen3_5-hv1", "qwen3_next-hv4"])
@pytest.mark.parametrize("keep", [4, 2])
@torch.no_grad()
def test_speculative_rollback_through_the_cache_matches_transformers(name, keep):
    """transformers >= 5.25 assisted decoding: the cache records past states, a forward of 4
    drafts keeps `keep` intermediate states (all 4: the chunked part is empty), `crop` rolls 2
    back, decoding goes on. The cache clones its state after the forward as the state before
    it, so a state advanced in place there would roll back to the wrong state."""
    skip_unless_recurrent_states_are_recorded()
    model = make_model(name)
    ids = prompt(45, seed=11)

    def run(kernels: str):
        deltanet.hf.patch_model(model, kernels)
        cache = DynamicCache(config=model.config)
        outs = [model(ids[:, :37], cache=cache, use_cache=True).logits]
        cache.activate_past_recording(recurrent_states_to_keep=keep)
        outs.append(model(ids[:, 37:41], cache=cache, use_cache=True).logits)  # 4 drafts
        cache.crop(-2)  # the last 2 rejected
        outs.append(model(ids[:, 39:40], cache=cache, use_cache=True).logits)
        outs.append(model(ids[:, 40:45], cache=cache, use_cache=True).logits)
        return outs

    for step, (ours, ref) in enumerate(zip(run("deltanet"), run("torch"))):
        assert rms_ratio(ours, ref) <= F32_TOL, f"step {step}"


@pytest.mark.parametrize("name", ["qwen3_5-hv1", "qwen3_next-hv4"])
def test_assisted_generate_matches_transformers(name):
    """Prompt-lookup assisted decoding (drafts verified in one forward, the cache rolled back on
    a rejection): the same greedy ids as transformers' torch path under the same assistance."""
    skip_unless_recurrent_states_are_recorded()
    model = make_model(name)
    ids = prompt(30, seed=3)
    ids = torch.cat([ids, ids[:, :12]], dim=1)  # a repeat, so the prompt lookup proposes drafts
    ours = generate(model, ids, "deltanet", 24, prompt_lookup_num_tokens=3)
    ref = generate(model, ids, "torch", 24, prompt_lookup_num_tokens=3)
    assert torch.equal(ours, ref)
