"""Our forward pass over mlx-lm's Llama modules, with packing and a sparse LM head.

mlx-lm's forward takes RoPE offsets from a KV cache and a single mask for the
batch, so it cannot restart positions per packed example. This forward reuses
the same modules (and hence the same weights and LoRA layers) but takes
per-token `positions` and `segments`: attention is causal *and* within one
segment (a block-diagonal causal mask). Without packing it is op-for-op
mlx-lm's forward. `hidden_states` stops after the final norm so the loss can
apply the LM head to the target rows only. On the CPU, attention's softmax and
the MLP's SiLU come from `cpu.fastmath` (MLX's own CPU exp is the slow part).
"""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from ..cpu import fastmath
from ..errors import MixloraError


def _inv_freq(rope: nn.Module, head_dim: int) -> mx.array:
    """Angles per unit position, [dims/2], for the RoPE variants Llama models use."""
    if isinstance(rope, nn.RoPE):
        d = rope.dims
        return rope.scale * rope.base ** (-mx.arange(0, d, 2, dtype=mx.float32) / d)
    freqs = getattr(rope, "_freqs", None)  # Llama3RoPE and friends store wavelengths
    if freqs is not None and float(getattr(rope, "_scale", 1.0) or 1.0) == 1.0:
        return 1.0 / freqs.astype(mx.float32)
    raise MixloraError(
        f"packing needs per-token RoPE positions, which {type(rope).__name__} does not support "
        "here; train with --no-pack"
    )


def rope_tables(attn: nn.Module, positions: mx.array) -> tuple[mx.array, mx.array, bool]:
    """cos/sin [B, 1, L, dims/2] for per-token `positions` [B, L]."""
    inv = _inv_freq(attn.rope, attn.head_dim)
    ang = positions.astype(mx.float32)[:, None, :, None] * inv
    return mx.cos(ang), mx.sin(ang), bool(getattr(attn.rope, "traditional", False))


def apply_rope(x: mx.array, cos: mx.array, sin: mx.array, traditional: bool) -> mx.array:
    """Rotate the first 2·cos.shape[-1] features of x [B, H, L, D] like mx.fast.rope."""
    half = cos.shape[-1]
    rot, rest = x[..., : 2 * half], x[..., 2 * half :]
    if traditional:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = mx.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1).reshape(rot.shape)
    else:
        x1, x2 = rot[..., :half], rot[..., half:]
        out = mx.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
    out = out.astype(x.dtype)
    return out if rest.shape[-1] == 0 else mx.concatenate([out, rest], axis=-1)


def segment_mask(segments: mx.array) -> mx.array:
    """Boolean [B, 1, L, L]: query i sees key j iff j <= i and both are in one segment."""
    L = segments.shape[1]
    idx = mx.arange(L)
    causal = idx[:, None] >= idx[None, :]
    same = segments[:, :, None] == segments[:, None, :]
    return (same & causal)[:, None]


def _attention(attn: nn.Module, x: mx.array, mask, rope) -> mx.array:
    B, L, _ = x.shape
    q = attn.q_proj(x).reshape(B, L, attn.n_heads, -1).transpose(0, 2, 1, 3)
    k = attn.k_proj(x).reshape(B, L, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
    v = attn.v_proj(x).reshape(B, L, attn.n_kv_heads, -1).transpose(0, 2, 1, 3)
    if rope is None:
        q, k = attn.rope(q), attn.rope(k)
    else:
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    if fastmath.use_cpu_math():
        o = fastmath.attention(q, k, v, attn.scale, mask)
    else:
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.scale, mask=mask)
    return attn.o_proj(o.transpose(0, 2, 1, 3).reshape(B, L, -1))


def _mlp(mlp: nn.Module, x: mx.array) -> mx.array:
    """mlx-lm's Llama SwiGLU MLP, with our SiLU on the CPU; other MLPs run as they are."""
    if type(mlp).__module__ == "mlx_lm.models.llama" and fastmath.use_cpu_math():
        return mlp.down_proj(fastmath.silu(mlp.gate_proj(x)) * mlp.up_proj(x))
    return mlp(x)


def block(layer: nn.Module, h: mx.array, mask, rope) -> mx.array:
    """One Llama decoder block (pre-norm attention + SwiGLU MLP), mlx-lm's math."""
    h = h + _attention(layer.self_attn, layer.input_layernorm(h), mask, rope)
    return h + _mlp(layer.mlp, layer.post_attention_layernorm(h))


def _checkpointed(layer: nn.Module, h: mx.array, mask, rope) -> mx.array:
    """`block` under mx.checkpoint: activations are recomputed in the backward pass."""
    params = layer.trainable_parameters()
    if rope is None:

        def inner(params, h):
            layer.update(params)
            return block(layer, h, mask, None)

        return mx.checkpoint(inner)(params, h)
    cos, sin, traditional = rope

    def inner_rope(params, h, cos, sin):
        layer.update(params)
        return block(layer, h, mask, (cos, sin, traditional))

    return mx.checkpoint(inner_rope)(params, h, cos, sin)


def hidden_states(
    model: nn.Module,
    tokens: mx.array,
    positions: mx.array | None = None,
    segments: mx.array | None = None,
    grad_checkpoint: bool = False,
) -> mx.array:
    """Final-norm hidden states [B, L, D] of an mlx-lm Llama-family model.

    With `segments` (packing), attention stays within a segment and RoPE uses
    `positions`; with neither, this is the plain causal forward.
    """
    inner = model.model
    h = inner.embed_tokens(tokens)
    layers = inner.layers
    if segments is None and positions is None:
        mask, rope = "causal", None
    else:
        if positions is None or segments is None:
            raise ValueError("positions and segments go together")
        mask = segment_mask(segments)
        rope = rope_tables(layers[0].self_attn, positions)
    for layer in layers:
        h = _checkpointed(layer, h, mask, rope) if grad_checkpoint else block(layer, h, mask, rope)
    return inner.norm(h)


def lm_head(model: nn.Module, h: mx.array) -> mx.array:
    """Apply the output projection (tied embedding or lm_head) to hidden rows."""
    if getattr(model.args, "tie_word_embeddings", False) or not hasattr(model, "lm_head"):
        return model.model.embed_tokens.as_linear(h)
    return model.lm_head(h)
