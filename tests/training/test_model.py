"""The transformer: KV-cache sampling equals recomputation; myopic attention cuts gradients to the past."""

import pytest
import torch

from instrumentality.errors import ConfigError
from instrumentality.model import GPT, GPTConfig


def make(**kw):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=29, block_size=32, n_layer=3, n_head=4, n_embd=32, **kw)).eval()


def test_kv_cache_logits_equal_full_recompute():
    model = make()
    x = torch.randint(0, 29, (3, 20))
    full = model(x)["logits"]
    cache = model.new_cache(3, 20)
    chunks = [model(x[:, :7], cache)["logits"]]  # prefill, then one token at a time
    for t in range(7, 20):
        chunks.append(model(x[:, t:t + 1], cache)["logits"])
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=1e-5)


def test_generate_with_cache_matches_recompute():
    model = make()
    prompt = torch.randint(0, 29, (4, 5))
    a, la = model.generate(prompt, 12, generator=torch.Generator().manual_seed(1), use_cache=True)
    b, lb = model.generate(prompt, 12, generator=torch.Generator().manual_seed(1), use_cache=False)
    assert torch.equal(a, b)
    torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)


def _input_grads(model, x, t):
    """Gradient of the loss at position t with respect to the input embeddings of every position."""
    store = {}

    def hook(_, __, out):
        out.retain_grad()
        store["emb"] = out

    h = model.wte.register_forward_hook(hook)
    logits = model(x)["logits"]
    h.remove()
    logits[:, t].logsumexp(-1).sum().backward()
    return store["emb"].grad


def test_myopic_forward_unchanged_and_no_gradient_to_the_past():
    plain, myopic = make(), make(myopic=True)
    myopic.load_state_dict(plain.state_dict())
    x = torch.randint(0, 29, (2, 16))
    torch.testing.assert_close(myopic(x)["logits"], plain(x)["logits"], atol=1e-5, rtol=1e-5)
    t = 10
    g_myopic = _input_grads(myopic, x, t)
    g_plain = _input_grads(plain, x, t)
    assert (g_myopic[:, :t] == 0).all()  # nothing reaches positions < t
    assert g_myopic[:, t].abs().sum() > 0  # position t itself still learns
    assert (g_plain[:, :t].abs().sum(-1) > 0).all()  # the ordinary model does send gradient back
    assert (g_plain[:, t + 1:] == 0).all() and (g_myopic[:, t + 1:] == 0).all()  # causal


def test_heads_shapes():
    model = make(value_head=True, n_future_heads=2)
    out = model(torch.randint(0, 29, (2, 9)), return_hidden=True)
    assert out["logits"].shape == (2, 9, 29) and out["value"].shape == (2, 9)
    assert out["future_logits"].shape == (2, 2, 9, 29) and len(out["hidden"]) == 4


def test_too_long_sequence_is_an_error():
    with pytest.raises(ValueError, match="block_size"):
        make()(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("bad,key", [({"n_layer": -1}, "model.n_layer"), ({"n_layer": 0}, "model.n_layer"),
                                     ({"n_embd": 30, "n_head": 4}, "model.n_embd")])
def test_invalid_model_config_names_the_key(bad, key):
    with pytest.raises(ConfigError, match=key):
        GPTConfig(**bad)


def test_residual_projections_get_the_scaled_init_by_name_and_old_checkpoints_load():
    """Both projections into the residual stream (attention's and the MLP's c_proj) start with std
    0.02 / sqrt(2 n_layer), the other linear layers with 0.02; a state dict that names the MLP's layers by
    position (mlp.0, mlp.2) loads into the named layers."""
    import math

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, block_size=8, n_layer=4, n_head=2, n_embd=128)
    model = GPT(cfg)
    scaled = 0.02 / math.sqrt(2 * cfg.n_layer)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            assert abs(float(p.std()) - scaled) < 0.1 * scaled, name
        elif name.endswith("c_fc.weight"):
            assert abs(float(p.std()) - 0.02) < 0.002, name
    old = {k.replace("mlp.c_fc.", "mlp.0.").replace("mlp.c_proj.", "mlp.2."): v for k, v in model.state_dict().items()}
    assert "blocks.0.mlp.2.weight" in old
    again = GPT(cfg)
    again.load_state_dict(old)
    for k, v in model.state_dict().items():
        assert torch.equal(v, again.state_dict()[k]), k
