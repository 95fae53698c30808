"""What every generative objective shares, whatever its noise: the model, its conditioning, pixel
or latent space, and the jitted sampler around the objective's own draw.

A subclass (`flow_matching.FlowMatching`, `ddpm.DDPM`) gives its loss (`loss`), how it draws
samples (`draw`) and which sampling options it takes (`sample_options`); the conditioning
(`config.conditioning`) gives the data, the null condition and the evaluation. In latent space
(`vae.name`: 'stvae' or 'sdvae') the target and the conditioning's pixel fields are encoded by the
frozen autoencoder (an ST-VAE encodes each item as a clip, the SD VAE frame by frame), inside the
step or once into a cache, and samples are decoded back to pixels.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from lavin_jax import conditioning, latents, models, parallel
from lavin_jax.config import frame_shape, require
from lavin_jax.objectives.base import Objective


def given(model, values: jax.Array):
    """`model` called with the known part of its input, `context["known"]` ((B, T, h, w) on the
    model's grid, 1: known), replaced by `values`: VDT's mask modelling gives those tokens clean,
    in training (the target) and sampling (the prompt's clip) alike."""

    def call(x, t, context):
        return model(jnp.where(context["known"][..., None].astype(bool), values, x), t, context)

    return call


class Generative(Objective):
    samples = True

    def __init__(self, config):
        super().__init__(config)
        self.conditioning = conditioning.get(config)

    @staticmethod
    def check(config) -> None:
        m, v, d = config.model, config.vae, config.data
        names = ("none", *models.AUTOENCODERS)
        require(v.name in names, f"config.vae.name={v.name!r} must be one of {names}.")
        require(
            v.name != "none" or m.in_channels == 3,
            f"config.model.in_channels={m.in_channels} but config.vae.name='none' trains on RGB "
            "pixels: set config.model.in_channels=3.",
        )
        require(
            v.name == "none" or (v.downsample > 0 and d.image_size % v.downsample == 0),
            f"config.data.image_size={d.image_size} is not divisible by config.vae.downsample={v.downsample}.",
        )
        size, _ = frame_shape(config)
        patch = m.get("patch_size", 1)  # a convolutional model has no patches.
        require(
            size > 0 and size % patch == 0,
            f"config.data.image_size={d.image_size} gives model inputs of side {size}, not divisible "
            f"by config.model.patch_size={patch}.",
        )

    def check_files(self, data: bool = True) -> None:
        v = self.config.vae
        if v.name != "none" and not v.checkpoint:
            raise ValueError(
                f"config.vae.name={v.name!r} needs config.vae.checkpoint, the workdir of its run (an ST-VAE: "
                "train one with configs/stvae_tiny.py; the SD VAE: python -m lavin_jax.convert --vae=...)."
            )
        if v.name != "none" and not os.path.isdir(os.path.join(v.checkpoint, "checkpoints")):
            raise FileNotFoundError(f"config.vae.checkpoint={v.checkpoint!r} is not a {v.name} run: it has no checkpoints directory.")
        if v.name != "none":
            self.autoencoder  # loads it: its family, latent statistics and channels are checked now.
        self.conditioning.check_model_files()
        if data:
            self.conditioning.check_files()

    def check_eval_files(self, judge: bool = True) -> None:
        self.conditioning.check_eval_files(judge)

    def build(self, rngs: nnx.Rngs) -> dict[str, nnx.Module]:
        return {"model": models.build(self.config.model, rngs)}

    @functools.cached_property
    def autoencoder(self) -> latents.Autoencoder:
        """The frozen autoencoder of config.vae.checkpoint (latent space only)."""
        autoencoder = latents.load(self.config.vae.checkpoint, self.config.vae.name)
        channels = autoencoder.config.model.latent_channels
        if channels != self.config.model.in_channels:
            raise ValueError(
                f"config.model.in_channels={self.config.model.in_channels} but the {self.config.vae.name} of "
                f"config.vae.checkpoint={self.config.vae.checkpoint!r} makes {channels}-channel latents."
            )
        return autoencoder

    def source(self, seed: int):
        return self.conditioning.source(seed)

    def constants(self) -> dict:
        """The frozen autoencoder's weights (pixels are encoded in the step and the sampler,
        samples decoded) and the conditioning's frozen encoder's."""
        frozen = {"conditioning": self.conditioning.constants()}
        if self.config.vae.name != "none":
            frozen["vae"] = self.autoencoder.params
        return frozen

    def abstract_constants(self, mesh) -> dict:
        frozen = {"conditioning": self.conditioning.abstract_constants()}
        if self.config.vae.name != "none":
            # Shapes from the autoencoder run's config, or the released one's where there is no run yet.
            self.autoencoder = latents.load(self.config.vae.checkpoint, self.config.vae.name, abstract=True, mesh=mesh)
            frozen["vae"] = self.autoencoder.params
        return frozen

    def largest_batch(self, batch_size: int) -> dict:
        """The conditioning's largest pixel batch; from a latent cache, the same batch encoded."""
        pixels = self.conditioning.largest_batch(batch_size)
        if self.config.data.source != "latents":
            return pixels
        frames = pixels["target"].shape[1]
        encoded = lambda batch, frozen: self.conditioning.encoded(self.encoded(batch, {"vae": self.autoencoder.params}, frames), frozen)
        return jax.eval_shape(encoded, pixels, self.conditioning.abstract_constants())

    def item_frames(self, frames: int) -> int:
        """The frames encoded together, for items of `frames` frames: the item as one clip, or
        each frame alone where the conditioning says so (VDT's per-frame latents)."""
        return 1 if self.conditioning.frames_alone else frames

    def encoded(self, batch: dict, constants: dict, frames: int) -> dict:
        """A batch whose target (if any) and pixel fields hold items of `frames` frames, with
        those fields as latents."""
        encode = lambda x: self.autoencoder.encode_frames(constants["vae"], x, self.item_frames(frames))
        fields = ("target", *self.conditioning.pixel_fields)
        return {**batch, **{name: encode(batch[name]) for name in fields if name in batch}}

    def model_frames(self, frames: int) -> int:
        """How many frames the model sees for an item of `frames` pixel frames."""
        if self.config.vae.name == "none":
            return frames
        item = self.item_frames(frames)
        return frames // item * self.autoencoder.latent_frames(item)

    def loss(self, model, batch: dict, key: jax.Array, weight: jax.Array | None = None) -> tuple[jax.Array, dict]:
        """(the batch's loss, stats) of `model` on a batch in model space; `weight`, broadcast to
        the target, counts only part of it."""
        raise NotImplementedError

    def grads(self, graphdefs, params, constants, batch, key, phase):
        if self.config.vae.name != "none" and self.config.data.source != "latents":
            batch = self.encoded(batch, constants, batch["target"].shape[1])  # a cache holds latents already.
        batch = self.conditioning.encoded(batch, constants["conditioning"])
        if "known" in batch:  # the known part enters clean and is not learnt.
            weight = 1.0 - batch["known"][..., None].astype(jnp.float32)
            loss_fn = lambda p: self.loss(given(nnx.merge(graphdefs["model"], p), batch["target"]), batch, key, weight)
        else:
            loss_fn = lambda p: self.loss(nnx.merge(graphdefs["model"], p), batch, key)
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params["model"])
        return {"model": grads}, {"loss": loss, **aux}

    def example_inputs(self) -> tuple:
        """One example of the conditioning's largest kind (for FLOPs)."""
        size, channels = frame_shape(self.config)
        frame = (size, size, channels)
        frames, context = self.conditioning.example_context(frame)
        x = jax.ShapeDtypeStruct((1, frames, *frame), jnp.float32)
        t = jax.ShapeDtypeStruct((1,), jnp.float32)
        return x, t, context

    def sample_options(self, **options) -> tuple[dict, tuple]:
        """(traced, static) sampling settings: the config's, with `options` (steps, cfg_scale,
        sampler, ...) overriding them. Traced ones (a guidance scale, a time grid) do not
        recompile the sampler; static ones (step counts, the method) do."""
        raise NotImplementedError

    def guidance_options(self, section, cfg_scale: float | None, motion_scale: float | None) -> tuple[dict, tuple]:
        """(traced scales, static flags) of guidance from `section` (config.flow or config.ddpm)
        and a sampler's options: `cfg_scale` against the null condition and, for a model whose
        conditioning has a motion-free null (GenTron's video), `motion_scale` against it
        (`guidance.chain`); 1 leaves that branch out."""
        scale = float(section.cfg_scale if cfg_scale is None else cfg_scale)
        motion = float(section.motion_scale if motion_scale is None else motion_scale)
        traced = {"cfg_scale": np.float32(scale), "motion_scale": np.float32(motion)}
        return traced, (("guided", scale != 1.0 or motion != 1.0), ("motion_guided", motion != 1.0))

    def guidance_nulls(self, context: dict, frames: int, static: tuple) -> list[dict]:
        """The weaker contexts a sample with these options is guided against (none: unguided)."""
        options = dict(static)
        if not options["guided"]:
            return []
        nulls = self.conditioning.nulls(context, frames)
        if not options["motion_guided"]:
            return nulls[:1]
        if len(nulls) < 2:  # raised while tracing, before any sampling runs.
            raise ValueError("A motion_scale other than 1 needs a model trained with motion-free clips (GenTron with config.model.temporal).")
        return nulls

    @staticmethod
    def scales(traced: dict, nulls: list) -> list:
        """The scales of `guidance_nulls`' contexts, in order."""
        return [traced["cfg_scale"], traced["motion_scale"]][: len(nulls)]

    def model_calls(self, traced: dict, static: tuple) -> int:
        """The model calls of one sample drawn with these options, per condition (guidance
        adds as many again per null)."""
        raise NotImplementedError

    def draw(self, model, context: dict, nulls: list[dict], keys: jax.Array, shape: tuple, traced: dict, static: tuple) -> jax.Array:
        """Samples of `shape` (B, T, H, W, C) in model space for `context`, guided against the
        weaker contexts `nulls` by `scales(traced, nulls)` (none: unguided); example b's noise
        from `keys[b]` alone."""
        raise NotImplementedError

    def sampler(self, graphdef, mesh: Mesh):
        """Jitted (params, constants, context, seed, indices, traced, frames, static) -> pixels
        [B, frames, H, W, 3] for the context's B examples (pixel fields encoded and answers
        decoded here in latent space). Example b's noise comes from (seed, indices[b]) alone.
        `frames` and `static` are static."""
        c = self.config
        size, channels = frame_shape(c)

        def sample(params, constants, context, seed, indices, traced, frames, static):
            with parallel.activation_sharding(mesh, c.mesh.rules):
                model = nnx.merge(graphdef, params)
                if c.vae.name != "none":
                    context = self.encoded(context, constants, frames)
                keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(indices)
                model_frames = self.model_frames(frames)
                shape = (indices.shape[0], model_frames, size, size, channels)
                nulls = self.guidance_nulls(context, model_frames, static)
                context, *nulls = (self.conditioning.encoded(told, constants["conditioning"]) for told in (context, *nulls))
                if "known" in context:
                    model = given(model, context["given"])
                prediction = self.draw(model, context, nulls, keys, shape, traced, static)
                if "known" in context:
                    prediction = jnp.where(context["known"][..., None].astype(bool), context["given"], prediction)
                if c.vae.name != "none":
                    prediction = self.autoencoder.decode_frames(constants["vae"], prediction, self.item_frames(frames))
                return prediction

        # Replicated, so every host can read every answer.
        return jax.jit(sample, out_shardings=NamedSharding(mesh, PartitionSpec()), static_argnums=(6, 7))
