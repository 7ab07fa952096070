"""Pydantic configurations of the FlexMF models (LensKit's names where LensKit has one)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

RegMethod = Literal["AdamW", "L2"]
LRSchedule = Literal["constant", "cosine", "exponential"]
ImplicitLoss = Literal["logistic", "pairwise", "warp"]
NegativeStrategy = Literal["uniform", "popular", "misranked"]


class FlexMFConfigBase(BaseModel):
    """Options shared by both FlexMF models."""

    model_config = ConfigDict(extra="forbid")

    embedding_size: int = Field(default=64, ge=1)
    """Dimension of the user and item embeddings (number of latent factors)."""

    epochs: int = Field(default=10, ge=1)
    """Number of passes over the training interactions (the maximum with early stopping)."""

    batch_size: int = Field(default=8192, ge=1)
    """Interactions per minibatch."""

    learning_rate: float = Field(default=0.01, gt=0)
    """Initial step size of the Adam-family optimizer."""

    lr_schedule: LRSchedule = "constant"
    """Learning-rate schedule over epochs: constant, cosine decay to `lr_min_factor` times the
    initial rate, or exponential decay reaching that factor in the last epoch."""

    lr_min_factor: float = Field(default=0.1, gt=0, le=1)
    """Final learning rate as a fraction of `learning_rate` for the decaying schedules."""

    regularization: float = Field(default=0.01, ge=0)
    """Regularization strength; its meaning depends on `reg_method`."""

    reg_method: RegMethod | None = "AdamW"
    """"AdamW": decoupled weight decay of `regularization` with dense gradients (AdamW).
    "L2": a penalty `regularization` times the mean squared norm of the parameters each batch
    touches (so rows are regularized in proportion to their interaction count), with
    row-sparse gradients and a lazy (SparseAdam-style) Adam. None: plain Adam."""

    init_scale: float = Field(default=0.1, gt=0)
    """Standard deviation of the normal initialization of embeddings (biases start at 0)."""

    device: str = "auto"
    """Torch device for training; "auto" picks CUDA when available."""

    seed: int = 42
    """Seed of every random choice in training and fold-in (initialization, order, negatives)."""


class FlexMFExplicitConfig(FlexMFConfigBase):
    """Biased matrix factorization for explicit ratings, trained in minibatches.

    Defaults were chosen on the validation slice of ML-100K's seeded 90/10 rating split.
    """

    epochs: int = Field(default=15, ge=1)
    """Number of passes over the training ratings (the maximum with early stopping)."""

    batch_size: int = Field(default=1024, ge=1)
    """Ratings per minibatch."""

    learning_rate: float = Field(default=0.005, gt=0)
    """Initial step size of the Adam-family optimizer."""

    lr_schedule: LRSchedule = "cosine"
    """Learning-rate schedule over epochs (see the base config)."""

    regularization: float = Field(default=0.07, ge=0)
    """Per-rating strength: with "L2", each rating in a batch adds this times the squared norms
    of its user and item embeddings (so rows are shrunk in proportion to their ratings)."""

    reg_method: RegMethod | None = "L2"
    """"L2" (penalty in the loss, row-sparse Adam) or "AdamW" (decoupled weight decay)."""

    init_scale: float = Field(default=0.01, gt=0)
    """Standard deviation of the normal initialization of embeddings (biases start at 0)."""

    bias_regularization: float = Field(default=5.0, ge=0)
    """With reg_method "L2": strength of a penalty on each user and item bias that does not grow
    with its number of ratings (damping, as in LensKit's BiasedMF), so rarely rated items and
    users are shrunk towards the mean."""

    uniform_regularization: float = Field(default=2.0, ge=0)
    """With reg_method "L2": strength of a penalty on each embedding that does not grow with its
    number of ratings (on top of the per-rating `regularization`)."""

    global_offset: bool = True
    """Train on residuals from the global mean rating (the mean becomes the global bias)."""

    rating_range: tuple[float, float] | None = None
    """Clamp predictions smoothly to (low, high) with a scaled sigmoid; None: infer the range
    from the training ratings when `sigmoid_range` is set."""

    sigmoid_range: bool = False
    """Pass predictions through a sigmoid scaled to the rating range (outputs never leave it)."""

    range_margin: float = Field(default=0.5, ge=0)
    """How far the sigmoid's asymptotes lie outside the observed rating range (so that the
    extreme ratings are reachable)."""

    early_stopping_patience: int = Field(default=3, ge=1)
    """Epochs without improvement of validation RMSE before training stops (only when `fit`
    gets a validation slice); the best epoch's parameters are kept."""

    fold_in_regularization: float | None = None
    """Ridge strength of the closed-form fold-in solve; None: derived from the training
    (calibrated on training users at the end of `fit`)."""


class FlexMFImplicitConfig(FlexMFConfigBase):
    """Matrix factorization for implicit feedback with sampled negatives.

    Defaults were chosen on the validation slice of ML-100K's seeded 20% per-user holdout.
    """

    epochs: int = Field(default=30, ge=1)
    """Number of passes over the training interactions."""

    batch_size: int = Field(default=8192, ge=1)
    """Positive interactions per minibatch."""

    learning_rate: float = Field(default=0.03, gt=0)
    """Initial step size of the Adam-family optimizer."""

    regularization: float = Field(default=0.01, ge=0)
    """With "L2": the strength times the mean squared norm of the user, positive and negative
    rows of a batch; with "AdamW": the weight decay."""

    reg_method: RegMethod | None = "L2"
    """"L2" (penalty in the loss, row-sparse Adam) or "AdamW" (decoupled weight decay)."""

    loss: ImplicitLoss = "logistic"
    """"logistic" (pointwise, LensKit's default), "pairwise" (BPR) or "warp" (pairwise weighted
    by the rank estimated from the misranked sampler's number of draws)."""

    negative_strategy: NegativeStrategy | None = None
    """How negatives are drawn: "uniform" over items, "popular" in proportion to item
    popularity, or "misranked" (WARP's sampler: draw until an item scores above the positive).
    None: "misranked" for WARP, "uniform" otherwise."""

    negative_count: int = Field(default=1, ge=1)
    """Negatives drawn per positive interaction."""

    positive_weight: float = Field(default=1.0, gt=0)
    """Multiplier of the positive items' loss (logistic loss only)."""

    user_bias: bool | None = None
    """Learn a user bias; None: only for logistic loss (pairwise losses cancel it)."""

    item_bias: bool = True
    """Learn an item bias."""

    max_draws: int = Field(default=64, ge=1)
    """Most candidates the misranked sampler draws per positive before giving up."""

    margin: float = Field(default=1.0, ge=0)
    """A candidate counts as misranked when it scores above the positive minus this margin."""

    exclude_positives: bool = True
    """Redraw (a bounded number of times) sampled negatives the user has interacted with."""

    fold_in_regularization: float | None = None
    """L2 strength of the fold-in objective; None: calibrated on training users in `fit`."""

    fold_in_steps: int = Field(default=20, ge=1)
    """Most Newton iterations of the deterministic fold-in (it stops once converged)."""

    def selected_negative_strategy(self) -> NegativeStrategy:
        """The negative strategy in effect (resolving the loss-dependent default)."""
        if self.negative_strategy is not None:
            return self.negative_strategy
        return "misranked" if self.loss == "warp" else "uniform"

    def selected_user_bias(self) -> bool:
        """Whether a user bias is learned (resolving the loss-dependent default)."""
        return self.user_bias if self.user_bias is not None else self.loss == "logistic"

    @model_validator(mode="after")
    def _check_warp(self) -> Self:
        if self.loss == "warp" and self.selected_negative_strategy() != "misranked":
            raise ValueError("loss 'warp' needs negative_strategy 'misranked'")
        return self
