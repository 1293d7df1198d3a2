"""Connectors: token counts, STC shapes and parity, mlp2x_gelu and spatial-merge parity with torch."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import safetensors.torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from exo2ego_jax.models.connectors import Connector, ConnectorConfig, num_visual_tokens, visual_grid  # noqa: E402
from exo2ego_jax.models.vit import VisionConfig  # noqa: E402
from exo2ego_jax.weights import vision_weights as vw  # noqa: E402
from exo2ego_jax.weights.safetensors_io import param_paths  # noqa: E402

CLIP_L_336 = VisionConfig()  # defaults: CLIP ViT-L/14-336
TINY_VIT = VisionConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, image_size=20, patch_size=5)


# ----------------------------------------------------------------------------- torch references
# VideoLLaMA2's STCConnector(V35) with timm's RegStage written out (timm is not a dependency);
# attribute names match the checkpoint keys (s1.b1.conv1.conv.weight, ..., readout.0.weight).


class _LN2d(nn.LayerNorm):
    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


class _ConvNormAct(nn.Module):
    def __init__(self, cin, cout, k, groups=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, padding=(k - 1) // 2, groups=groups, bias=False)
        self.bn = _LN2d(cout, eps=1e-5)
        self.act = act

    def forward(self, x):
        x = self.bn(self.conv(x))
        return F.silu(x) if self.act else x


class _SE(nn.Module):
    def __init__(self, c, rd):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, rd, 1), nn.Conv2d(rd, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.silu(self.fc1(x.mean((2, 3), keepdim=True)))))


class _Bottleneck(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = _ConvNormAct(cin, cout, 1)
        self.conv2 = _ConvNormAct(cout, cout, 3, groups=cout)
        self.se = _SE(cout, int(round(cin * 0.25)))
        self.conv3 = _ConvNormAct(cout, cout, 1, act=False)
        self.downsample = _ConvNormAct(cin, cout, 1, act=False) if cin != cout else nn.Identity()

    def forward(self, x):
        return F.silu(self.conv3(self.se(self.conv2(self.conv1(x)))) + self.downsample(x))


class _RegStage(nn.Sequential):
    def __init__(self, depth, cin, cout):
        super().__init__()
        for i in range(depth):
            self.add_module(f"b{i + 1}", _Bottleneck(cin if i == 0 else cout, cout))


class _STC(nn.Module):
    def __init__(self, din, dout, depth, padding):
        super().__init__()
        self.s1 = _RegStage(depth, din, dout)
        self.sampler = nn.Sequential(nn.Conv3d(dout, dout, 2, stride=2, padding=padding), nn.SiLU())
        self.s2 = _RegStage(depth, dout, dout)
        self.readout = nn.Sequential(nn.Linear(dout, dout), nn.GELU(), nn.Linear(dout, dout))

    def forward(self, x):  # x [b, t, hw, d], as in videollama2/model/projector.py
        b, t, hw, d = x.shape
        h = int(hw ** 0.5)
        x = x.reshape(b, t, h, h, d).permute(0, 1, 4, 2, 3).reshape(b * t, d, h, h)
        x = self.s1(x)
        x = x.reshape(b, t, *x.shape[1:]).permute(0, 2, 1, 3, 4)
        x = self.sampler(x)
        t2 = x.shape[2]
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t2, *x.shape[1:2], *x.shape[3:])
        x = self.s2(x)
        x = x.reshape(b, t2, *x.shape[1:]).permute(0, 1, 3, 4, 2).reshape(b, -1, x.shape[1])
        return self.readout(x)


def _randomise(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn_like(p))
    return module.eval()


def _build(cfg, vision=TINY_VIT):
    with nnx.use_eager_sharding(False):
        return Connector(cfg, vision, rngs=nnx.Rngs(0))


def _load_torch(ours, ref, tmp_path, prefix="model.mm_projector."):
    path = str(tmp_path / "proj.safetensors")
    safetensors.torch.save_file({prefix + k: v.contiguous() for k, v in ref.state_dict().items()}, path)
    vw.load_connector(ours, path, key_prefix=prefix)


def _feats(b, f, n, d, seed=0):
    return np.random.default_rng(seed).normal(size=(b, f, n, d)).astype(np.float32)


# ----------------------------------------------------------------------------- tests


def test_token_counts():
    stc = ConnectorConfig(kind="stc")
    assert visual_grid(stc, CLIP_L_336, 16) == (8, 12, 12)
    assert num_visual_tokens(stc, CLIP_L_336, 16) == 1152  # VideoLLaMA2-7B-16F
    assert num_visual_tokens(ConnectorConfig(kind="stc", stc_padding=1), CLIP_L_336, 16) == 9 * 13 * 13
    assert num_visual_tokens(ConnectorConfig(kind="mlp2x_gelu"), CLIP_L_336, 8) == 8 * 576
    siglip = VisionConfig(model_type="siglip", hidden_size=1152, intermediate_size=4304, num_layers=27,
                          num_heads=16, image_size=384, patch_size=14, hidden_act="gelu_pytorch_tanh")
    merge = ConnectorConfig(kind="merge_mlp2x_gelu", in_dim=1152, out_dim=3584)
    assert num_visual_tokens(merge, siglip, 32) == 32 * 14 * 14  # bilinear: ceil(27 / 2)
    assert num_visual_tokens(ConnectorConfig(kind="merge_mlp2x_gelu", merge_mode="average"), siglip, 1) == 169


@pytest.mark.parametrize("padding", [0, 1])
def test_stc_parity_with_videollama2(padding, tmp_path):
    cfg = ConnectorConfig(kind="stc", in_dim=16, out_dim=24, stc_depth=2, stc_padding=padding)
    ours = _build(cfg)
    ref = _randomise(_STC(16, 24, 2, padding))
    _load_torch(ours, ref, tmp_path)
    x = _feats(2, 4, 16, 16)
    out = ours(jnp.asarray(x))
    t, h, w = visual_grid(cfg, TINY_VIT, 4)
    assert out.shape == (2, t * h * w, 24) == (2, num_visual_tokens(cfg, TINY_VIT, 4), 24)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, want, atol=1e-4, rtol=1e-4)


def test_stc_param_count_matches_torch():
    cfg = ConnectorConfig(kind="stc", in_dim=16, out_dim=24, stc_depth=2)
    ours = sum(v.get_value().size for v in param_paths(_build(cfg)).values())
    assert ours == sum(p.numel() for p in _STC(16, 24, 2, 0).parameters())
    assert set(vw.to_mapping(vw.connector_entries(cfg))) == set(param_paths(_build(cfg)))


def test_mlp2x_gelu_parity(tmp_path):
    cfg = ConnectorConfig(kind="mlp2x_gelu", in_dim=16, out_dim=24)
    ours = _build(cfg)
    ref = _randomise(nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 24)))
    _load_torch(ours, ref, tmp_path)
    x = _feats(2, 3, 16, 16)
    with torch.no_grad():
        want = ref(torch.from_numpy(x)).reshape(2, -1, 24).numpy()
    np.testing.assert_allclose(ours(jnp.asarray(x)), want, atol=1e-5, rtol=1e-5)
    exported = vw.export_connector(ours)
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(exported["model.mm_projector." + k], v.numpy())


@pytest.mark.parametrize("mode", ["bilinear", "average", "max"])
def test_spatial_merge_parity(mode, tmp_path):
    vit = VisionConfig(hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2, image_size=25, patch_size=5)
    cfg = ConnectorConfig(kind="merge_mlp2x_gelu", in_dim=16, out_dim=24, merge_mode=mode)
    ours = _build(cfg, vit)
    ref = _randomise(nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 24)))
    _load_torch(ours, ref, tmp_path)
    x = _feats(2, 3, 25, 16)
    xt = torch.from_numpy(x).reshape(6, 5, 5, 16).permute(0, 3, 1, 2)
    if mode == "bilinear":
        pooled = F.interpolate(xt, size=(3, 3), mode="bilinear")
    else:
        pooled = (F.avg_pool2d if mode == "average" else F.max_pool2d)(xt, 2)
    with torch.no_grad():
        want = ref(pooled.permute(0, 2, 3, 1)).reshape(2, -1, 24).numpy()
    out = ours(jnp.asarray(x))
    assert out.shape == (2, num_visual_tokens(cfg, vit, 3), 24)
    np.testing.assert_allclose(out, want, atol=1e-5, rtol=1e-5)


def test_bad_feature_shape_is_named():
    ours = _build(ConnectorConfig(kind="stc", in_dim=16, out_dim=24, stc_depth=1))
    with pytest.raises(ValueError, match="17 tokens per frame"):
        ours(jnp.zeros((1, 2, 17, 16)))
    with pytest.raises(ValueError, match="in_dim"):
        _build(ConnectorConfig(kind="stc", in_dim=8, out_dim=24))
