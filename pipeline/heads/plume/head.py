"""PLUME head: a classifier trained to tell normal features from adaptively perturbed ones
(PLUME paper, sections 3-4). ``fit`` on the normal class's features, ``score_samples`` = minus
the classifier's logit. The modules and losses are in ``model.py``; this is the training glue.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pipeline.devices import resolve_device
from pipeline.errors import PipelineError
from pipeline.heads.base import EpochCallback, Features, Head
from pipeline.heads.plume.model import (Classifier, InputNorm, Perturbator, guidance_loss, identity_targets,
                                        kl_divergence, limit_shift, near_identity_loss, perturb,
                                        perturbation_diagnostics)
from pipeline.heads.plume.settings import LR_RULES, PlumeParams
from pipeline.progress import detail, progress


@dataclass(eq=False, repr=False, kw_only=True)
class PlumeHead(PlumeParams, Head):
    """Trained on the normal class; score = minus the classifier's logit. Its parameters are
    declared in ``settings.py``: the defaults are params.yaml's, ``PlumeHead.preset("paper")``
    the paper's run (eq. 1 taken literally, D = 3072, 100 epochs), ``preset("authors")`` the
    authors' code."""

    name = "plume"

    def _check_params(self) -> None:
        super()._check_params()
        if self.select == "held-out" and self.val_fraction == 0:
            raise PipelineError("PLUME: select held-out needs normal training images to hold out: give a validation "
                                "fraction above 0.")

    # -- training -------------------------------------------------------------------------

    def _fit(self, features: Features, labels: np.ndarray | None, callback: EpochCallback | None) -> None:
        """Train on the normal class; ``callback(self, record)`` after every epoch (the
        evaluation records the test AUROC there; it never changes the training).

        With ``val_fraction`` > 0, that fraction of the rows (``held_out_rows_``, drawn from
        ``seed``) is kept out of training (the range test included) and scored after every
        epoch against its own pseudo-anomalies (``_validate``: ``val_auroc``, ``val_ce`` and
        ``val_best_epoch`` in the records); ``select="held-out"`` then keeps the weights of
        the best validation epoch (``selected_epoch_``)."""
        device = resolve_device(self.device)
        x_all = torch.as_tensor(np.asarray(features.pooled), dtype=torch.float32, device=device)
        if x_all.ndim != 2:
            raise PipelineError(f"PLUME needs 2-D features (samples, dimensions), got shape {tuple(x_all.shape)}.")
        train_rows, self.held_out_rows_ = held_out_split(len(x_all), self.val_fraction, self.seed)
        if len(train_rows) < 2:
            raise PipelineError(f"PLUME needs at least 2 training features, got {len(train_rows)}"
                                + (f" after holding out {len(self.held_out_rows_)} for validation."
                                   if len(self.held_out_rows_) else "."))
        x_train = x_all[torch.as_tensor(train_rows, device=device)]
        held_out = x_all[torch.as_tensor(self.held_out_rows_, device=device)] if len(self.held_out_rows_) else None
        batch_size = min(self.batch_size, len(x_train))
        steps_per_epoch = len(x_train) // batch_size
        self.epochs_run_ = self.epochs_for(len(x_train))
        perturbator = self._build(x_train.shape[1], device)
        modules = [m for m in (self.input_norm_, self.classifier_, perturbator) if m is not None]

        generator = torch.Generator().manual_seed(self.seed)
        if isinstance(self.lr, str):
            self.lr_used_ = lr_range_test(self, perturbator, x_train, batch_size, generator, self.lr)
            detail(f"PLUME seed {self.seed}: the learning-rate range test ({self.lr}) chose lr {self.lr_used_:.3g}")
        else:
            self.lr_used_ = float(self.lr)
        params = [p for m in modules for p in m.parameters()]
        optimiser = adamw(params, self.lr_used_, self.weight_decay)
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=self.lr_used_,
                                                       total_steps=self.epochs_run_ * steps_per_epoch)
        # The average (its batch-norm statistics too) starts as a copy of the classifier and is
        # what score_samples uses while it exists; it becomes ``classifier_`` at the end.
        self._averaged = (AveragedModel(self.classifier_, multi_avg_fn=get_ema_multi_avg_fn(self.ema),
                                        use_buffers=True) if self.ema else None)
        self.history_, self.validation_ = [], None
        best: dict | None = None  # the best validation epoch so far: its figures and (held-out) its weights
        for epoch in range(1, self.epochs_run_ + 1):
            for m in modules:
                m.train()
            order = torch.randperm(len(x_train), generator=generator).to(device)
            sums: dict[str, float] = {}
            for step in range(steps_per_epoch):
                batch = x_train[order[step * batch_size:(step + 1) * batch_size]]
                losses = self._losses(batch, perturbator)
                optimiser.zero_grad(set_to_none=True)
                losses["loss"].backward()
                optimiser.step()
                schedule.step()
                if self._averaged is not None:
                    self._averaged.update_parameters(self.classifier_)
                for name, value in losses.items():
                    sums[name] = sums.get(name, 0.0) + float(value.detach())
            # lr_used (the one-cycle peak) in every record: the evaluation's curves carry it per seed.
            record = {"epoch": epoch, "lr": schedule.get_last_lr()[0], "lr_used": self.lr_used_,
                      **{name: total / steps_per_epoch for name, total in sums.items()}}
            if not math.isfinite(record["loss"]):
                raise PipelineError(f"PLUME diverged at epoch {epoch} (loss {record['loss']}); "
                                    f"lower the learning rate (it was {self.lr_used_:.3g}).")
            if held_out is not None:
                self.validation_ = self._validate(held_out, perturbator, epoch)
                figures = {"val_auroc": self.validation_["auroc"], "val_ce": self.validation_["ce"]}
                # Higher AUROC first; on a tie (it saturates at 1) the lower cross-entropy; then the earlier epoch.
                if best is None or (figures["val_auroc"], -figures["val_ce"]) > (best["val_auroc"], -best["val_ce"]):
                    best = {"epoch": epoch, **figures}
                    if self.select == "held-out":
                        best["weights"] = self._scoring_state()
                        best["validation"] = self.validation_
                record.update(figures, val_best_epoch=best["epoch"])
            self.history_.append(record)
            if callback is not None:
                callback(self, record)
        if self._averaged is not None:
            self.classifier_ = self._averaged.module
        self._averaged = None
        self.selected_epoch_ = self.epochs_run_
        if self.select == "held-out":
            self.input_norm_.load_state_dict(best["weights"]["input_norm"])
            self.classifier_.load_state_dict(best["weights"]["classifier"])
            self.selected_epoch_, self.validation_ = best["epoch"], best["validation"]

    def epochs_for(self, n_train: int) -> int:
        """The epochs run on ``n_train`` training rows: ``epochs``, or more where that many would
        make fewer than ``min_steps`` optimiser steps (a small class: digits' 81 rows make 2
        steps of 32 per epoch, CIFAR-10's 4,500 make 140)."""
        steps_per_epoch = max(1, n_train // max(1, min(self.batch_size, n_train)))
        return max(self.epochs, -(-self.min_steps // steps_per_epoch))

    def _scoring_classifier(self) -> torch.nn.Module:
        """The classifier score_samples uses: the running average of its weights while
        training with ``ema``, else the classifier itself."""
        averaged = getattr(self, "_averaged", None)
        return self.classifier_ if averaged is None else averaged.module

    def _scoring_state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Copies of the input normalisation's and the scoring classifier's states."""
        return {"input_norm": copy.deepcopy(self.input_norm_.state_dict()),
                "classifier": copy.deepcopy(self._scoring_classifier().state_dict())}

    @torch.no_grad()
    def _validate(self, held_out: torch.Tensor, perturbator: Perturbator | None, epoch: int) -> dict:
        """The held-out normal rows against their own pseudo-anomalies, scored as the test set
        is (eval mode: batch norm on its running statistics, the scoring classifier):

        - ``auroc``: AUROC with the pseudo-anomalies as positives. It is the figure the
          selection ranks by, not the held-out loss, because it is what the test is graded
          by (a ranking, blind to the scale of the logits, which the cross-entropy rewards
          and which grows as the classifier grows confident); and because, scored in eval
          mode, it shows the inversion the training loss cannot: a classifier whose logit
          rises with the feature norm ranks its own (larger) pseudo-anomalies as normal.
        - ``ce``: the training's cross-entropy on the same scores (normal 1, perturbed 0);
          it breaks ties of the AUROC, which saturates at 1.
        - ``normal_scores``, ``anomaly_scores``: the scores themselves; ``anomalies``: the
          pseudo-anomalies mapped back to the cached feature space (``InputNorm.invert``;
          None when the classifier's input is pooled to another size).

        The perturbator's noise is drawn from ``seed`` in a forked random state, so every
        epoch sees the same draw and the training's random numbers are untouched."""
        self.input_norm_.eval()
        classifier = self._scoring_classifier()
        classifier.eval()
        x = self.input_norm_(held_out)
        devices = [held_out.device] if held_out.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.seed)
            if perturbator is not None:
                perturbator.eval()
            x_tilde, _ = self._pseudo_anomalies(x, perturbator)
        logits, logits_tilde = classifier(x), classifier(x_tilde)
        ce = (F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
              + F.binary_cross_entropy_with_logits(logits_tilde, torch.zeros_like(logits_tilde)))
        normal_scores = -logits.double().cpu().numpy()
        anomaly_scores = -logits_tilde.double().cpu().numpy()
        auroc = roc_auc_score(np.r_[np.zeros(len(normal_scores)), np.ones(len(anomaly_scores))],
                              np.r_[normal_scores, anomaly_scores])
        anomalies = self.input_norm_.invert(x_tilde).cpu().numpy() if self.input_norm_.invertible else None
        return {"epoch": epoch, "auroc": float(auroc), "ce": float(ce), "normal_scores": normal_scores,
                "anomaly_scores": anomaly_scores, "anomalies": anomalies}

    def _build(self, in_dim: int, device: torch.device | str = "cpu") -> Perturbator | None:
        """The input normalisation and classifier (kept: ``input_norm_``, ``classifier_``) and the
        perturbator (returned; None for the gaussian perturbation), initialised from ``seed``."""
        torch.manual_seed(self.seed)
        dim = in_dim if self.dim == "native" else int(self.dim)
        self.input_norm_ = InputNorm(in_dim, dim).to(device)
        self.classifier_ = Classifier(dim).to(device)
        return None if self.perturbation == "gaussian" else Perturbator(dim, self.perturbation).to(device)

    def _pseudo_anomalies(self, x: torch.Tensor, perturbator: Perturbator | None
                          ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """The pseudo-anomalies of a batch of normalised features, their shifts limited to
        ``max_shift``, and the perturbator's (alpha, beta, mu, logvar) (None: gaussian noise)."""
        if perturbator is None:
            x_tilde, outputs = perturb(x, self.perturbation, noise_std=self.noise_std), None
        else:
            outputs = perturbator(x)
            x_tilde = perturb(x, self.perturbation, outputs[0], outputs[1])
        return limit_shift(x, x_tilde, self.max_shift), outputs

    def _losses(self, raw: torch.Tensor, perturbator: Perturbator | None) -> dict[str, torch.Tensor]:
        """Eq. 8 for one batch of raw cached features: the total and each term."""
        x = self.input_norm_(raw)
        x_tilde, outputs = self._pseudo_anomalies(x, perturbator)
        if outputs is None:
            identity = kl = x.new_zeros(())
        else:
            alpha, beta, mu, logvar = outputs
            identity = near_identity_loss(alpha, beta, self.identity_loss,
                                          identity_targets(self.perturbation, self.identity_target))
            kl = kl_divergence(mu, logvar)
        if self.batch_mode == "joint":
            z_all = self.classifier_.embed(torch.cat([x, x_tilde]))
            z, z_tilde = z_all.split(len(x))
        else:
            z, z_tilde = self.classifier_.embed(x), self.classifier_.embed(x_tilde)
        logits, logits_tilde = self.classifier_.f2(z).squeeze(1), self.classifier_.f2(z_tilde).squeeze(1)
        ce = (F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
              + F.binary_cross_entropy_with_logits(logits_tilde, torch.zeros_like(logits_tilde)))
        guide = (guidance_loss(self.guidance, z, z_tilde, self.tau, self.guidance_form) if self.gamma
                 else x.new_zeros(()))
        total = ce + self.lam * identity + self.nu * kl + self.gamma * guide
        return {"loss": total, "ce": ce, "identity": identity, "kl": kl, "guidance": guide,
                **perturbation_diagnostics(x, x_tilde)}

    # -- scoring --------------------------------------------------------------------------

    @torch.inference_mode()
    def score_samples(self, features: Features | np.ndarray, batch_size: int = 4096) -> np.ndarray:
        if not hasattr(self, "classifier_"):
            raise PipelineError("fit the PLUME head before scoring")
        classifier = self._scoring_classifier()
        self.input_norm_.eval()
        classifier.eval()
        device = next(classifier.parameters()).device
        features = np.asarray(Features.of(features).pooled)
        if features.ndim != 2 or features.shape[1] != self.input_norm_.in_dim:
            raise PipelineError(f"PLUME was trained on {self.input_norm_.in_dim}-d features; got shape {features.shape}.")
        scores = []
        for start in range(0, len(features), batch_size):
            block = torch.as_tensor(features[start:start + batch_size], dtype=torch.float32, device=device)
            scores.append(-classifier(self.input_norm_(block)).float().cpu())
        return torch.cat(scores).numpy().astype(np.float64)

    # -- saving (pipeline.heads.saving) ----------------------------------------------------

    def _state(self) -> dict:
        """The config, the input normalisation (pooling size, batch-norm running statistics) and
        the classifier's state_dict: all that scoring needs. The perturbator only makes
        pseudo-anomalies during training, so it is not kept (the head does not keep it either)."""
        if not hasattr(self, "classifier_"):
            raise PipelineError("fit the PLUME head before saving it")

        def on_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
            return {name: value.detach().cpu().clone() for name, value in module.state_dict().items()}

        return {"config": self.params(), "feature_dim": self.input_norm_.in_dim,
                "dim": self.input_norm_.dim, "input_norm": on_cpu(self.input_norm_),
                "classifier": on_cpu(self._scoring_classifier()), "lr_used": self.lr_used_,
                "selected_epoch": getattr(self, "selected_epoch_", None),
                # Plain floats: the file is read with weights_only=True, which refuses NumPy scalars.
                "history": json.loads(json.dumps(self.history_, default=float))}

    @classmethod
    def _from_state(cls, state: dict, device: str = "cpu") -> "PlumeHead":
        head = cls(**{**state["config"], "device": device})
        head.history_, head.lr_used_ = list(state.get("history", [])), state.get("lr_used")
        head.selected_epoch_ = state.get("selected_epoch")
        in_dim, dim = int(state["feature_dim"]), int(state["dim"])
        head.input_norm_, head.classifier_ = InputNorm(in_dim, dim), Classifier(dim)
        head.input_norm_.load_state_dict(state["input_norm"])
        head.classifier_.load_state_dict(state["classifier"])
        head.input_norm_.to(device).eval()
        head.classifier_.to(device).eval()
        return head


def held_out_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the training and the held-out rows among ``n`` (both sorted): a random
    ``fraction`` of them (rounded, at least one when the fraction is above 0), drawn from
    ``seed`` alone, so every configuration trained with that seed holds out the same rows."""
    if fraction <= 0:
        return np.arange(n), np.arange(0)
    count = min(n, max(1, round(fraction * n)))
    held_out = np.sort(np.random.default_rng(seed).permutation(n)[:count])
    return np.setdiff1d(np.arange(n), held_out), held_out


def adamw(params: list[torch.nn.Parameter], lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where torch has one for the device (6x faster per step on
    a CPU for PLUME's 12M parameters at D = 1280); the same update either way."""
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def lr_range_test(head: PlumeHead, perturbator: Perturbator | None, x_all: torch.Tensor, batch_size: int,
                  generator: torch.Generator, rule: str = "lowest-loss", steps: int = 100) -> float:
    """A learning-rate range test (Smith, the CLR paper the PLUME paper cites): train one batch
    at each of ``steps`` exponentially rising rates, then pick the one-cycle peak by ``rule``:

    - ``lowest-loss``: rates 1e-6 .. 1, loss smoothed by an exponential moving average (0.9);
      a tenth of the rate at which the smoothed loss was lowest.
    - ``steepest``: the rule of Lightning 2.0's ``lr_find(num_training=100).suggestion()``, which
      the authors' code uses: rates 1e-8 .. 1 as Lightning's exponential schedule steps them,
      loss smoothed by a bias-corrected moving average (0.98), the test stopped once the
      smoothed loss passes 4 times its lowest, and the rate at which the smoothed loss falls
      fastest per step (``steepest_descent_rate``).

    The modules are put back as they were afterwards."""
    if rule == "lowest-loss":
        smoothed: list[float] = []

        def keep_going(step: int, loss: float) -> bool:
            smoothed.append(loss if not smoothed else 0.9 * smoothed[-1] + 0.1 * loss)
            return not (step > 10 and smoothed[-1] > 4 * min(smoothed))

        factor = (1.0 / 1e-6) ** (1 / max(steps - 1, 1))
        rates = [1e-6 * factor ** k for k in range(steps)]
        draws = (torch.randint(len(x_all), (batch_size,), generator=generator) for _ in range(steps))
        _train_through_rates(head, perturbator, x_all, rates, draws, keep_going)
        return rates[int(np.argmin(smoothed))] / 10 if smoothed else rates[0] / 10
    if rule == "steepest":
        losses: list[float] = []

        def keep_going(step: int, loss: float) -> bool:
            losses.append(loss)
            curve = debiased_moving_average(losses)
            return not (step >= 1 and curve[-1] > 4 * min(curve[:-1]))

        rates = lightning_exponential_rates(1e-8, 1.0, steps)
        # As the authors' shuffled loader gives them: each epoch a new permutation.
        draws = (batch for _ in range(steps) for batch in shuffled_batches(len(x_all), batch_size, generator))
        # Beta1 0.95: in the authors' run the one-cycle schedule, built before the test, has set
        # AdamW's first momentum to its starting value, and Lightning's test keeps that optimiser.
        _train_through_rates(head, perturbator, x_all, rates, draws, keep_going, betas=(0.95, 0.999))
        rate = steepest_descent_rate(rates[:len(losses)], debiased_moving_average(losses))
        if rate is None:
            raise PipelineError(f"PLUME: the steepest-slope learning-rate rule found too few finite losses "
                                f"({len(losses)} steps before the test stopped); give --lr a number.")
        return rate
    raise ValueError(f"unknown learning-rate rule {rule!r}; choose from {', '.join(LR_RULES)}")


def _train_through_rates(head: PlumeHead, perturbator: Perturbator | None, x_all: torch.Tensor, rates: list[float],
                         draws: Iterator[torch.Tensor], keep_going: Callable[[int, float], bool],
                         betas: tuple[float, float] | None = None) -> None:
    """One optimiser step per rate, on the batch of rows ``draws`` gives, until a loss is not
    finite or ``keep_going(step, loss)`` says stop; then the modules' states are restored."""
    modules = [m for m in (head.input_norm_, head.classifier_, perturbator) if m is not None]
    saved = [copy.deepcopy(m.state_dict()) for m in modules]
    optimiser = adamw([p for m in modules for p in m.parameters()], rates[0], head.weight_decay)
    for m in modules:
        m.train()
    # leave=False: a step inside the classes' progress; in a log it prints only if it runs long.
    with progress(total=len(rates), desc="PLUME lr range test", unit="step", leave=False) as bar:
        for step, (lr, index) in enumerate(zip(rates, draws)):
            for group in optimiser.param_groups:
                group["lr"] = lr
                if betas is not None:
                    group["betas"] = betas
            loss = head._losses(x_all[index.to(x_all.device)], perturbator)["loss"]
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            value = float(loss.detach())
            bar.set_postfix_str(f"lr {lr:.2g}, loss {value:.4g}", refresh=False)
            bar.update(1)
            if not math.isfinite(value) or not keep_going(step, value):
                break
    for m, state in zip(modules, saved):
        m.load_state_dict(state)


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch of full batches of a random permutation of range(n)."""
    order = torch.randperm(n, generator=generator)
    return [order[start:start + batch_size] for start in range(0, n - batch_size + 1, batch_size)]


def lightning_exponential_rates(start_lr: float, end_lr: float, steps: int) -> list[float]:
    """The rates of Lightning's exponential range test, step by step: ``start_lr`` first, then
    start * (end / start) ** ((k + 1) / steps) at step k >= 1 (its scheduler computes step k's
    rate from k + 1, so 1 / steps of the range is skipped after the first step)."""
    return [start_lr] + [start_lr * (end_lr / start_lr) ** ((k + 1) / steps) for k in range(1, steps)]


def debiased_moving_average(losses: list[float], beta: float = 0.98) -> list[float]:
    """Lightning's smoothed losses: an exponential moving average from 0, divided by
    1 - beta ** (k + 2) at step k (Lightning counts the optimiser step just taken)."""
    average, smoothed = 0.0, []
    for k, loss in enumerate(losses):
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta ** (k + 2)))
    return smoothed


def steepest_descent_rate(rates: list[float], smoothed: list[float], skip_begin: int = 10,
                          skip_end: int = 1) -> float | None:
    """The rate at the steepest descent of the smoothed loss (Lightning 2.0's ``suggestion``):
    drop the first ``skip_begin`` and last ``skip_end`` points and the non-finite ones, take
    the slope per step (central differences, one-sided at the ends: ``np.gradient`` with unit
    spacing; steps are equal in log rate) and return the rate where it is most negative; None
    with fewer than two points. (Lightning 2.0 indexed past dropped non-finite points wrongly;
    here the rate is the one that point was measured at. Later Lightning versions take the
    slope per unit of rate instead, which favours higher rates.)"""
    kept = range(skip_begin, len(smoothed) - skip_end)
    finite = [k for k in kept if math.isfinite(smoothed[k])]
    if len(finite) < 2:
        return None
    slopes = np.gradient(np.array([smoothed[k] for k in finite], dtype=np.float64))
    return float(rates[finite[int(np.argmin(slopes))]])


HEAD = PlumeHead
