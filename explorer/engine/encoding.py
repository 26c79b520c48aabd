"""Encoding and batch decoding, synchronous and callable from any thread: the image half
of :class:`~explorer.engine.render.RenderEngine` (mixed into it, as
:mod:`~explorer.engine.measure` and :mod:`~explorer.engine.devices` are). It uses the
engine's model set (:mod:`~explorer.engine.model_set`), its level-cache decode and its
hand-over to the render thread.

A one-image encode (a Draw answer, a dropped file) and a likelihood description are a
person waiting, as a frame is: they run on the render thread as *answers*, which go before
batch jobs and cut a plan-measurement decode short as a waiting frame does. Batched encodes
run there too, after the waiting frames, so the process has one OpenMP team."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from core.files.images import to_uint8
from core.flow.model import RealNVP, pixel_centres
from explorer.engine.devices import batch_threads, set_thread_team
from explorer.engine.likelihood import describe_pixel_batch, describe_pixels
from explorer.engine.requests import SAMPLES_TARGET
from explorer.state.gallery import EncodedImage
from explorer.state.likelihood import LikelihoodView


class ImageEncoding:
    """The encoding half of :class:`~explorer.engine.render.RenderEngine`."""

    # -- encoding and batch decoding (synchronous, any thread) ------------------------------

    def encode(self, pixels: np.ndarray) -> EncodedImage:
        """Encode one ``uint8 (C, H, W)`` image of the model's channels and size.

        The latents are those of the pixel centres ``(k + 0.5) / 256``, so they are a pure
        function of the pixels; the reconstruction error is ``|decode(encode(x)) - x|`` in
        ``[0, 1]`` units. bits/dim is the likelihood map's total on the original model with
        the dequantization noise of :data:`core.flow.model.ENCODE_SEED`, one image alone: the
        figure ``realnvp encode`` prints, computed by the same function, and within float32
        rounding (about 1e-5) of ``RealNVP.bits_per_dim`` with that seed. A separate
        ``bits_per_dim`` pass cost a quarter of the encode (10 of 40 ms for the bundled model
        on one thread) and a Draw answer its frame budget. Raises ``ValueError`` for the
        wrong shape or no model.

        It runs on the render thread as an answer (a waiting frame's peer: it cuts a
        plan-measurement decode short, and goes before batch jobs).
        """
        pixels = np.asarray(pixels)
        return self._on_render_thread(lambda: self._encode_here(pixels), answer=True)

    def _encode_here(self, pixels: np.ndarray) -> EncodedImage:
        self._threads_here()
        models = self.models
        with models.lock:
            info = models.checked_one(pixels)
            model = models.exact
            param = next(model.parameters())  # type: ignore[union-attr]
            with torch.inference_mode():
                x8 = torch.from_numpy(np.ascontiguousarray(pixels))[None].to(param.device)
                x = pixel_centres(x8).to(param.dtype)  # (1, C, H, W)
                latents = [z.float().cpu().numpy() for z in models.encode(x)]
                # Decoded through the samples view's level cache: the image usually becomes
                # the view next, and its frame is then a full cache hit.
                recon, _ = self._decode(model, latents, SAMPLES_TARGET)  # type: ignore[arg-type]
                error = (recon - x).abs()[0]  # (C, H, W)
                likelihood = describe_pixels(models.original, pixels, models.reference)
                result = EncodedImage(
                    model_id=info.model_id,
                    latents=tuple(z[0].copy() for z in latents),
                    reconstruction=to_uint8(recon[0].float().cpu().numpy()),
                    error=error.float().cpu().numpy(),
                    bits_per_dim=float(likelihood.bits_per_dim),
                    likelihood=likelihood,
                )
        return result

    def encode_images(self, pixels: np.ndarray, model_id: int | None = None) -> list[EncodedImage]:
        """:meth:`encode` for many images at once, ``uint8 (N, C, H, W)``: latents,
        reconstructions and likelihood maps each in one batched pass (a folder import: at
        batch 64 an image costs about a fifth of its one-image passes on the bundled model).

        Same figures as :meth:`encode` to float rounding, whatever images share the batch:
        the latents and reconstructions are those of each image's pixel centres, and
        ``bits_per_dim`` is the likelihood map's total with the encode seed's noise, which
        is what ``realnvp encode`` prints. No level cache.

        It runs on the render thread (:meth:`_on_render_thread`: one OpenMP team in the
        process), after the frames waiting, with every core (``--threads`` if given), and
        on the CPU with channels_last copies of the models: oneDNN's convolutions run a
        64-image batch of the bundled model in about 0.7x the time there (measured on a
        2-core Xeon, 4.8 against 6.6 ms an image for the three passes). ``ValueError`` for
        the wrong shape, no model, or a model changed since ``model_id``."""
        pixels = np.asarray(pixels)
        return self._on_render_thread(lambda: self._encode_images_here(pixels, model_id))

    def _encode_images_here(self, pixels: np.ndarray, model_id: int | None) -> list[EncodedImage]:
        models = self.models
        with models.lock:
            info = models.checked(pixels, model_id)
            model, original = models.batch_models(info.model_id)
            set_thread_team(self.plan.threads if self._forced_threads else batch_threads())
            try:
                param = next(model.parameters())
                with torch.inference_mode():
                    x8 = torch.from_numpy(np.ascontiguousarray(pixels)).to(param.device)
                    x = pixel_centres(x8).to(param.dtype)  # (N, C, H, W)
                    latents = [z.float().cpu().numpy() for z in model.encode(x)]
                    recon, _ = self._decode(model, latents, None)
                    errors = (recon - x).abs().float().cpu().numpy()
                    recon8 = to_uint8(recon.float().cpu().numpy())
                    views = describe_pixel_batch(original, pixels, models.reference)
            finally:
                self._threads_here()
            return [
                EncodedImage(
                    model_id=info.model_id,
                    latents=tuple(z[i].copy() for z in latents),
                    reconstruction=recon8[i],
                    error=errors[i],
                    bits_per_dim=float(view.bits_per_dim),
                    likelihood=view,
                )
                for i, view in enumerate(views)
            ]

    def describe_likelihood(self, pixels: np.ndarray) -> LikelihoodView:
        """Likelihood map, per-level bits and typicality verdict of a uint8 ``(C, H, W)``
        image of the open model's shape (a sample, a dropped image). Call it off the GUI
        thread: it costs about one encode, on the render thread as an answer (as
        :meth:`encode`). ``ValueError`` without a model or for a wrong shape."""
        pixels = np.asarray(pixels)
        return self._on_render_thread(lambda: self._describe_here(pixels), answer=True)

    def _describe_here(self, pixels: np.ndarray) -> LikelihoodView:
        self._threads_here()
        with self.models.lock:
            self.models.checked_one(pixels)
            return describe_pixels(self.models.original, pixels, self.models.reference)

    def likelihood_model_copy(self, model_id: int | None = None) -> RealNVP:
        """A copy of the open model's original (unfolded, eval mode) for work that needs
        gradients and runs for seconds (completions): it runs on the copy without holding
        the model lock, so frames and encodes go on meanwhile. ``model_id``: refuse
        (``ValueError``) when the open model has changed."""
        return self.models.copy_original(model_id)

    def decode(self, latents: Sequence[np.ndarray], model_id: int | None = None) -> np.ndarray:
        """``uint8 (N, C, H, W)`` images for ``latents`` (finest first, each ``(N, C, H, W)``),
        without the level cache. ``model_id``: refuse (``ValueError``) when the open model
        has changed since the latents were made."""
        self._threads_here()
        with self.models.lock:
            model = self.models.exact
            if model is None or (model_id is not None and model_id != self.model_id):
                raise ValueError("the model has changed")
            latents = [np.ascontiguousarray(z, dtype=np.float32) for z in latents]
            with torch.inference_mode():
                images, _ = self._decode(model, latents, None)
                return to_uint8(images.float().cpu().numpy())

    # -- batch encoding for the latent map (synchronous, any thread) --------------------------

    def encode_batch(self, pixels: np.ndarray, model_id: int | None = None) -> list[np.ndarray]:
        """Latents (finest first, each ``float32 (N, C, H, W)``) of ``uint8 (N, C, H, W)``
        images' pixel centres, as :meth:`encode` gives them but without bits/dim or the
        level cache. Callers pass small chunks: the model lock is held meanwhile, and frames
        wait. ``model_id``: refuse (``ValueError``) when the open model has changed."""
        self._threads_here()
        pixels = np.asarray(pixels)
        with self.models.lock:
            self.models.checked(pixels, model_id)
            model = self.models.exact
            param = next(model.parameters())  # type: ignore[union-attr]
            with torch.inference_mode():
                x8 = torch.from_numpy(np.ascontiguousarray(pixels)).to(param.device)
                x = pixel_centres(x8).to(param.dtype)
                return [z.float().cpu().numpy() for z in model.encode(x)]  # type: ignore[union-attr]
