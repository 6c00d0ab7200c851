"""HTDemucs' forward pass in three parts, so that its real-valued network can run on another
engine: exported to ONNX (`onnx_runtime`) or compiled by Inductor (`compiled`).

The complex STFT / iSTFT have blocked a plain ONNX export of HTDemucs; compiled whole, the tests'
tiny HTDemucs did not finish compiling in 15 minutes on 2 cores, while its network alone compiles
in about a minute (bench/results/engines.md). Here its forward
(`demucs.htdemucs.HTDemucs.forward`, Demucs 4.0/4.1) is redone in three parts with the same
arithmetic in the same order:

- `front` (PyTorch): pad the segment to the training length, `_spec` (STFT) and `_magnitude`
  (the complex spectrogram as real channels);
- `HTDemucsNetwork` (the engine's part): both normalisations, the frequency and time encoders, the
  cross-domain transformer, both decoders and the de-normalisations: real tensors only;
- `back` (PyTorch): `_mask` (complex-as-channels back to complex, or Wiener filtering),
  `_ispec` (iSTFT), the sum of both branches and the trim to the input length.

Only HTDemucs is split: HDemucs and Demucs (v2/v3) raise `Unsupported` (see `check`).
"""

from __future__ import annotations

from typing import Any

import torch
from demucs.htdemucs import HTDemucs
from einops import rearrange
from torch import nn
from torch.nn import functional as F

from worker.engines import EngineUnavailable


class Unsupported(EngineUnavailable):
    """The model cannot run on the engine asked for (its architecture, its settings, the
    precision or the device): the message names STEMFLEET_ENGINE."""


def check(model: Any, engine: str) -> None:
    """Raise `Unsupported` (saying why) unless `model` is an HTDemucs the split reproduces;
    `engine` (onnx, compiled) names the engine in the message."""
    if not isinstance(model, HTDemucs):
        raise Unsupported(
            f"the {engine} engine runs HTDemucs models only, not {type(model).__name__}: "
            "set STEMFLEET_ENGINE=eager (or auto) for this model"
        )
    transformer = model.crosstransformer
    if transformer is not None and (
        transformer.emb == "sin" and transformer.sin_random_shift
    ):  # a random positional shift on every pass: an export would freeze one draw
        raise Unsupported(
            f"the {engine} engine cannot run an HTDemucs with sin_random_shift > 0: "
            "set STEMFLEET_ENGINE=eager"
        )
    if transformer is not None and any(
        getattr(layer, "sparse", False) for layer in [*transformer.layers, *transformer.layers_t]
    ):
        raise Unsupported(
            f"the {engine} engine cannot run an HTDemucs with sparse attention: "
            "set STEMFLEET_ENGINE=eager"
        )


def input_length(model: HTDemucs, length: int) -> int:
    """Frames the network sees for a segment of `length` frames (HTDemucs pads a shorter
    segment to its training length)."""
    if model.use_train_segment:
        training_length = int(model.segment * model.samplerate)
        return max(length, training_length)
    return length


def front(model: HTDemucs, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(z: the complex spectrogram, mag: the network's frequency input, mix: padded)."""
    padded = input_length(model, mix.shape[-1])
    if padded > mix.shape[-1]:
        mix = F.pad(mix, (0, padded - mix.shape[-1]))
    z = model._spec(mix)
    mag = model._magnitude(z).to(mix.device)
    return z, mag, mix


def back(
    model: HTDemucs, z: torch.Tensor, x: torch.Tensor, xt: torch.Tensor, length: int
) -> torch.Tensor:
    """The separated segment [B, S, C, length] from the network's two outputs."""
    zout = model._mask(z, x)
    out = xt + model._ispec(zout, xt.shape[-1])
    return out[..., :length]


class HTDemucsNetwork(nn.Module):
    """The real-valued middle of `HTDemucs.forward`: (mag [B, C', Fq, T], mix [B, C, L]) ->
    (x [B, S, C', Fq, T] de-normalised, xt [B, S, C, L] de-normalised)."""

    def __init__(self, model: HTDemucs) -> None:
        super().__init__()
        self.model = model

    def forward(self, mag: torch.Tensor, mix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        x = mag
        B, _, Fq, T = x.shape
        length = mix.shape[-1]
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) / (1e-5 + std)
        meant = mix.mean(dim=(1, 2), keepdim=True)
        stdt = mix.std(dim=(1, 2), keepdim=True)
        xt = (mix - meant) / (1e-5 + stdt)

        saved: list[torch.Tensor] = []
        saved_t: list[torch.Tensor] = []
        lengths: list[int] = []
        lengths_t: list[int] = []
        for idx, encode in enumerate(m.encoder):
            lengths.append(x.shape[-1])
            inject = None
            if idx < len(m.tencoder):
                lengths_t.append(xt.shape[-1])
                tenc = m.tencoder[idx]
                xt = tenc(xt)
                if not tenc.empty:
                    saved_t.append(xt)
                else:
                    inject = xt
            x = encode(x, inject)
            if idx == 0 and m.freq_emb is not None:
                frs = torch.arange(x.shape[-2], device=x.device)
                emb = m.freq_emb(frs).t()[None, :, :, None].expand_as(x)
                x = x + m.freq_emb_scale * emb
            saved.append(x)
        if m.crosstransformer:
            if m.bottom_channels:
                f = x.shape[2]
                x = rearrange(x, "b c f t-> b c (f t)")
                x = m.channel_upsampler(x)
                x = rearrange(x, "b c (f t)-> b c f t", f=f)
                xt = m.channel_upsampler_t(xt)
            x, xt = m.crosstransformer(x, xt)
            if m.bottom_channels:
                x = rearrange(x, "b c f t-> b c (f t)")
                x = m.channel_downsampler(x)
                x = rearrange(x, "b c (f t)-> b c f t", f=f)
                xt = m.channel_downsampler_t(xt)

        for idx, decode in enumerate(m.decoder):
            skip = saved.pop(-1)
            x, pre = decode(x, skip, lengths.pop(-1))
            offset = m.depth - len(m.tdecoder)
            if idx >= offset:
                tdec = m.tdecoder[idx - offset]
                length_t = lengths_t.pop(-1)
                if tdec.empty:
                    pre = pre[:, :, 0]
                    xt, _ = tdec(pre, None, length_t)
                else:
                    xt, _ = tdec(xt, saved_t.pop(-1), length_t)

        S = len(m.sources)
        x = x.view(B, S, -1, Fq, T)
        x = x * std[:, None] + mean[:, None]
        xt = xt.view(B, S, -1, length)
        xt = xt * stdt[:, None] + meant[:, None]
        return x, xt
