"""IGD head (IGD paper: Chen, Tian et al., AAAI 2022) on frozen pooled features.

The paper trains a ResNet18 encoder/decoder on images; with a pretrained backbone it freezes
the backbone and trains a linear layer to Z = 128 on top. Here the backbone's pooled vector
is cached, so what is trained is:

- ``f``: an encoder (MLP, or one linear layer with ``hidden=0``) from the standardised vector
  to a Z-d code; ``g``: a decoder back to the vector, with a batch norm on its first layer
  (``model.decoder`` says why); ``d``: a critic (MLP, sigmoid output);
- E-step (eq. 3), before training and after every epoch: ``mu`` and ``sigma^2`` of the codes
  of the whole normal training set, held fixed during the next epoch;
- M-step (eq. 7), every batch: the autoencoder lowers ``l_h + lambda_2 l_fg`` with
  ``l_h = 1 - exp(-||f(x) - mu||^2 / sigma^2)`` (eq. 5, 8) and ``l_fg = l_r + lambda_3
  d(x_hat_alpha)^2`` (eq. 11), then the critic lowers ``lambda_1 l_d`` (eq. 10), taking turns
  as a GAN does (ACAI, and the authors' code: two optimisers);
- score (eq. 14, the global model): ``l_r(x) + l_h(x)``.

The equations themselves are in ``model.py``; this is the training glue.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from pipeline.heads.base import EpochCallback, Features, Head
from pipeline.heads.igd.model import (Critic, Standardise, adversarial_term, critic_loss, gaussian_loss,
                                      decoder, gaussian_statistics, interpolate, mlp, reconstruction_error)
from pipeline.heads.igd.settings import IGDParams


@dataclass(eq=False, repr=False, kw_only=True)
class IGDHead(IGDParams, Head):
    """Trained on the normal class; score = reconstruction error + (1 - p(normal)). Its
    parameters are declared in ``settings.py``."""

    name = "igd"

    # -- training -------------------------------------------------------------------------

    def _fit(self, features: Features, labels: np.ndarray | None, callback: EpochCallback | None) -> None:
        """EM: an E-step before training and after every epoch, the M-step batch by batch;
        ``callback(self, record)`` after every epoch's E-step (the evaluation records the test
        AUROC there; it never changes the training)."""
        device = resolve_device(self.device)
        raw = torch.as_tensor(np.asarray(features.pooled), dtype=torch.float32)
        if raw.ndim != 2:
            raise PipelineError(f"IGD needs 2-D features (samples, dimensions), got shape {tuple(raw.shape)}.")
        if len(raw) < 2:
            raise PipelineError(f"IGD needs at least 2 training features, got {len(raw)}.")
        if not torch.isfinite(raw).all():
            raise PipelineError("IGD: the training features hold NaN or infinite values.")
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        dims = raw.shape[1]
        self.standardise_ = Standardise(dims)
        self.standardise_.set_statistics(raw, self.standardise)
        self.standardise_.to(device)
        self.encoder_ = mlp(dims, self.hidden, self.latent_dim).to(device)
        self.decoder_ = decoder(self.latent_dim, self.hidden, dims).to(device)
        critic = Critic(dims, self.hidden).to(device)
        x_all = self.standardise_(raw.to(device))
        autoencoder = [*self.encoder_.parameters(), *self.decoder_.parameters()]
        optimiser = adam(autoencoder, self.lr, self.weight_decay)
        optimiser_critic = adam(list(critic.parameters()), self.lr, 0.0)

        batch_size = min(self.batch_size, len(x_all))
        self._e_step(x_all)
        self.history_ = []
        for epoch in range(1, self.epochs + 1):
            self.decoder_.train()  # batch statistics in the M-step; running ones when scoring
            order = torch.randperm(len(x_all), generator=generator).to(device)
            sums: dict[str, float] = {}
            steps = 0
            for start in range(0, len(x_all), batch_size):
                batch = x_all[order[start:start + batch_size]]
                if len(batch) < 2:  # a last batch of one has no partner to interpolate with
                    continue
                terms = self._m_step(batch, critic, optimiser, optimiser_critic, generator)
                for name, value in terms.items():
                    sums[name] = sums.get(name, 0.0) + value
                steps += 1
            self._e_step(x_all)
            record = {"epoch": epoch, **{name: total / steps for name, total in sums.items()},
                      "sigma2": float(self.sigma2_)}
            if not math.isfinite(record["loss"]):
                raise PipelineError(f"IGD diverged at epoch {epoch} (loss {record['loss']}); lower the learning "
                                    f"rate (it was {self.lr:.3g}).")
            self.history_.append(record)
            if callback is not None:
                callback(self, record)

    def _m_step(self, x: torch.Tensor, critic: Critic, optimiser: torch.optim.Optimizer,
                optimiser_critic: torch.optim.Optimizer, generator: torch.Generator) -> dict[str, float]:
        """One batch: the autoencoder's step on ``l_h + lambda_2 l_fg``, then the critic's on
        ``lambda_1 l_d``. Returns the terms (and eq. 7's total, ``loss``) as numbers."""
        n = len(x)
        alpha = (torch.rand(n, 1, generator=generator) * self.alpha_max).to(x.device)
        zeta = torch.rand(n, 1, generator=generator).to(x.device)
        z = self.encoder_(x)
        x_hat = self.decoder_(z)
        x_alpha = self.decoder_(interpolate(z, alpha))
        l_h = gaussian_loss(z, self.mu_, self.sigma2_).mean()
        l_r = reconstruction_error(x, x_hat, self.reconstruction).mean()
        adversarial = adversarial_term(critic(x_alpha))
        l_fg = l_r + self.lambda_3 * adversarial
        optimiser.zero_grad(set_to_none=True)
        (l_h + self.lambda_2 * l_fg).backward()
        optimiser.step()
        # The critic learns from this batch's interpolations and reconstructions, detached: its
        # loss must not move the autoencoder (which works against it through lambda_3).
        x_alpha, x_hat = x_alpha.detach(), x_hat.detach()
        l_d = critic_loss(critic(x_alpha), alpha, critic(zeta * x + (1 - zeta) * x_hat))
        optimiser_critic.zero_grad(set_to_none=True)
        (self.lambda_1 * l_d).backward()
        optimiser_critic.step()
        values = {name: float(value.detach()) for name, value in
                  (("gaussian", l_h), ("reconstruction", l_r), ("adversarial", adversarial), ("critic", l_d))}
        values["loss"] = values["gaussian"] + self.lambda_1 * values["critic"] + self.lambda_2 * (
            values["reconstruction"] + self.lambda_3 * values["adversarial"])
        return {"loss": values.pop("loss"), **values}

    @torch.no_grad()
    def _e_step(self, x_all: torch.Tensor, batch_size: int = 8192) -> None:
        """``mu_`` and ``sigma2_`` of the codes of every training row (eq. 3)."""
        z = torch.cat([self.encoder_(x_all[s:s + batch_size]) for s in range(0, len(x_all), batch_size)])
        self.mu_, self.sigma2_ = gaussian_statistics(z)

    # -- scoring --------------------------------------------------------------------------

    @torch.no_grad()
    def score_terms(self, features: Features | np.ndarray, batch_size: int = 8192) -> dict[str, np.ndarray]:
        """Per sample, the two terms of the score: ``reconstruction`` (l_r) and ``gaussian`` (l_h)."""
        if not hasattr(self, "encoder_"):
            raise PipelineError("fit the IGD head before scoring")
        features = np.asarray(Features.of(features).pooled)
        dims = self.standardise_.mean.shape[0]
        if features.ndim != 2 or features.shape[1] != dims:
            raise PipelineError(f"IGD was trained on {dims}-d features; got shape {features.shape}.")
        self.decoder_.eval()
        device = self.mu_.device
        terms: dict[str, list[torch.Tensor]] = {"reconstruction": [], "gaussian": []}
        for start in range(0, len(features), batch_size):
            x = self.standardise_(torch.as_tensor(features[start:start + batch_size], dtype=torch.float32,
                                                  device=device))
            z = self.encoder_(x)
            terms["reconstruction"].append(reconstruction_error(x, self.decoder_(z), self.reconstruction).cpu())
            terms["gaussian"].append(gaussian_loss(z, self.mu_, self.sigma2_).cpu())
        return {name: torch.cat(parts).double().numpy() for name, parts in terms.items()}

    def score_samples(self, features: Features | np.ndarray) -> np.ndarray:
        """Eq. 14, the global model: ``l_r(x, g(f(x))) + l_h(x)``."""
        terms = self.score_terms(features)
        return terms["reconstruction"] + terms["gaussian"]

    # -- saving (pipeline.heads.saving) ----------------------------------------------------

    def _state(self) -> dict:
        """The config, the input statistics, encoder, decoder and the Gaussian descriptor: all
        that scoring needs. The critic only shapes training, so it is not kept."""
        if not hasattr(self, "encoder_"):
            raise PipelineError("fit the IGD head before saving it")

        def on_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
            return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}

        return {"config": self.params(), "feature_dim": int(self.standardise_.mean.shape[0]),
                "standardise": on_cpu(self.standardise_), "encoder": on_cpu(self.encoder_),
                "decoder": on_cpu(self.decoder_), "mu": self.mu_.detach().cpu().clone(),
                "sigma2": self.sigma2_.detach().cpu().clone(),
                # Plain floats: the file is read with weights_only=True, which refuses NumPy scalars.
                "history": json.loads(json.dumps(self.history_, default=float))}

    @classmethod
    def _from_state(cls, state: dict, device: str = "cpu") -> "IGDHead":
        head = cls(**{**state["config"], "device": device})
        dims = int(state["feature_dim"])
        head.standardise_ = Standardise(dims)
        head.encoder_ = mlp(dims, head.hidden, head.latent_dim)
        head.decoder_ = decoder(head.latent_dim, head.hidden, dims)
        for module, key in ((head.standardise_, "standardise"), (head.encoder_, "encoder"), (head.decoder_, "decoder")):
            module.load_state_dict(state[key])
            module.to(device).eval()
        head.mu_, head.sigma2_ = state["mu"].to(device), state["sigma2"].to(device)
        head.history_ = list(state.get("history", []))
        return head


def adam(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam (the paper's optimiser, with torch's default betas), fused into one kernel where torch
    has one for the device (4x faster per step on a CPU for IGD's 2M parameters at D = 1280);
    the same update either way."""
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


HEAD = IGDHead
