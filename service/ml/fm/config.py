"""Pydantic configurations of the factorization machines `fm-explicit` and `fm-implicit`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.ml.features import FeatureSelection

LRSchedule = Literal["constant", "cosine"]
FMImplicitLoss = Literal["logistic", "pairwise"]
FMNegativeStrategy = Literal["uniform", "popular"]


class FMConfigBase(BaseModel):
    """Options shared by both factorization machines."""

    model_config = ConfigDict(extra="forbid")

    embedding_size: int = Field(default=32, ge=1)
    """Dimension of every feature's embedding (number of latent factors)."""

    user_id: bool = True
    """Use the user id as a feature (a per-user embedding and bias)."""

    item_id: bool = True
    """Use the item id as a feature (a per-item embedding and bias)."""

    user_features: bool = True
    """Use the users' attributes (see `features`)."""

    item_features: bool = True
    """Use the items' tags and attributes (see `features`)."""

    implicit_feedback: bool = True
    """Add the user's set of rated items as user features, each valued 1/sqrt(history length)
    (SVD++'s implicit feedback), with an embedding table of its own."""

    item_implicit_feedback: bool = False
    """Add the set of users who interacted with an item as item features, each valued
    1/sqrt(their number) (the item-side twin of `implicit_feedback`); a cold item has none."""

    features: FeatureSelection = FeatureSelection()
    """Which attributes and tags are features and how numbers are encoded."""

    epochs: int = Field(default=20, ge=1)
    """Number of passes over the training interactions (the maximum with early stopping)."""

    batch_size: int = Field(default=1024, ge=1)
    """Interactions per minibatch."""

    learning_rate: float = Field(default=0.005, gt=0)
    """Initial step size of the (row-sparse, lazy) Adam optimizer."""

    lr_schedule: LRSchedule = "cosine"
    """Learning-rate schedule over epochs: constant, or cosine decay to `lr_min_factor` times
    the initial rate."""

    lr_min_factor: float = Field(default=0.1, gt=0, le=1)
    """Final learning rate as a fraction of `learning_rate` with the cosine schedule."""

    init_scale: float = Field(default=0.01, gt=0)
    """Standard deviation of the normal initialization of embeddings (biases start at 0)."""

    reg_user_id: float = Field(default=0.05, ge=0)
    """L2 strength on user-id embeddings, per interaction the user appears in."""

    reg_item_id: float = Field(default=0.05, ge=0)
    """L2 strength on item-id embeddings, per interaction the item appears in."""

    reg_user_features: float = Field(default=0.05, ge=0)
    """L2 strength on user-attribute embeddings, per interaction (times the value squared)."""

    reg_item_features: float = Field(default=0.05, ge=0)
    """L2 strength on item tag/attribute embeddings, per interaction (times the value squared)."""

    reg_implicit: float = Field(default=0.05, ge=0)
    """L2 strength on the implicit-feedback embeddings, per interaction (times 1/history
    length, so a user's whole history weighs like one feature)."""

    reg_bias: float = Field(default=0.01, ge=0)
    """L2 strength on every feature's linear weight (bias), per interaction."""

    uniform_regularization: float = Field(default=0.0, ge=0)
    """L2 strength on each embedding that does not grow with how often its feature occurs: each
    interaction adds this divided by the feature's number of training interactions (damping)."""

    bias_damping: float = Field(default=0.0, ge=0)
    """Like `uniform_regularization`, for the features' linear weights (LensKit's damping), so
    rare users, items and categories are shrunk towards the mean."""

    fold_in_regularization: float = Field(default=0.1, gt=0)
    """Ridge strength per rated item of the fold-in solve of a new user's own embedding and bias
    (on top of what their attributes and history give through the features)."""

    device: str = "auto"
    """Torch device for training; "auto" picks CUDA when available."""

    seed: int = 42
    """Seed of every random choice in training and fold-in (initialization, order, negatives)."""


class FMExplicitConfig(FMConfigBase):
    """Factorization machine for explicit ratings: squared loss on residuals from the mean.

    Defaults were chosen on the validation slice of ML-100K's seeded 90/10 rating split.
    """

    item_implicit_feedback: bool = True
    """Add the set of users who rated an item as item features, each valued 1/sqrt(their
    number) (the item-side twin of `implicit_feedback`); a cold item has none."""

    epochs: int = Field(default=15, ge=1)
    """Number of passes over the training ratings (the maximum with early stopping)."""

    batch_size: int = Field(default=4096, ge=1)
    """Ratings per minibatch."""

    learning_rate: float = Field(default=0.01, gt=0)
    """Initial step size of the (row-sparse, lazy) Adam optimizer."""

    reg_user_id: float = Field(default=0.2, ge=0)
    """L2 strength on user-id embeddings, per rating of the user."""

    reg_item_id: float = Field(default=0.2, ge=0)
    """L2 strength on item-id embeddings, per rating of the item."""

    reg_user_features: float = Field(default=0.2, ge=0)
    """L2 strength on user-attribute embeddings, per rating (times the value squared)."""

    reg_item_features: float = Field(default=0.2, ge=0)
    """L2 strength on item tag/attribute embeddings, per rating (times the value squared)."""

    reg_implicit: float = Field(default=0.2, ge=0)
    """L2 strength on the implicit-feedback embeddings, per rating (times 1/set size)."""

    early_stopping_patience: int = Field(default=3, ge=1)
    """Epochs without improvement of validation RMSE before training stops (only when `fit`
    gets a validation slice); the best epoch's parameters are kept."""

    sigmoid_range: bool = False
    """Pass predictions through a sigmoid scaled to the rating range (outputs never leave it)."""

    rating_range: tuple[float, float] | None = None
    """(low, high) of the sigmoid with `sigmoid_range`; None: the observed range widened by
    `range_margin`."""

    range_margin: float = Field(default=0.5, ge=0)
    """How far the sigmoid's asymptotes lie outside the observed rating range."""


class FMImplicitConfig(FMConfigBase):
    """Factorization machine for implicit feedback with sampled negatives."""

    epochs: int = Field(default=20, ge=1)
    """Number of passes over the training interactions."""

    batch_size: int = Field(default=4096, ge=1)
    """Positive interactions per minibatch."""

    learning_rate: float = Field(default=0.02, gt=0)
    """Initial step size of the (row-sparse, lazy) Adam optimizer."""

    implicit_feedback: bool = False
    """Add the user's set of interacted items as user features (SVD++ style); off by default
    for implicit feedback, where it duplicates the training target."""

    reg_user_id: float = Field(default=0.01, ge=0)
    """L2 strength on user-id embeddings, per interaction the user appears in."""

    reg_item_id: float = Field(default=0.01, ge=0)
    """L2 strength on item-id embeddings, per positive or negative the item appears in."""

    reg_user_features: float = Field(default=0.01, ge=0)
    """L2 strength on user-attribute embeddings, per interaction (times the value squared)."""

    reg_item_features: float = Field(default=0.01, ge=0)
    """L2 strength on item tag/attribute embeddings, per interaction (times the value squared)."""

    reg_implicit: float = Field(default=0.01, ge=0)
    """L2 strength on the implicit-feedback embeddings (times 1/history length)."""

    reg_bias: float = Field(default=0.001, ge=0)
    """L2 strength on every feature's linear weight (bias)."""

    loss: FMImplicitLoss = "logistic"
    """"logistic" (pointwise log loss, negatives labelled 0) or "pairwise" (BPR)."""

    negative_strategy: FMNegativeStrategy = "uniform"
    """How negatives are drawn (the FlexMF sampler): "uniform" over trained items, or "popular"
    in proportion to item popularity."""

    negative_count: int = Field(default=1, ge=1)
    """Negatives drawn per positive interaction."""

    exclude_positives: bool = True
    """Redraw (a bounded number of times) sampled negatives the user has interacted with."""

    fold_in_regularization: float = Field(default=1.0, gt=0)
    """L2 strength of the fold-in objective of a new user's own embedding and bias."""

    fold_in_steps: int = Field(default=20, ge=1)
    """Most Newton iterations of the deterministic fold-in."""
