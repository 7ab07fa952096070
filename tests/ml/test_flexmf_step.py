"""The hand-derived implicit FlexMF step against autograd: same loss, same updated tables."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from service.ml.data import Interactions, Vocabulary
from service.ml.flexmf import sampling
from service.ml.flexmf.config import FlexMFImplicitConfig
from service.ml.flexmf.implicit import _ImplicitTrainer
from service.ml.flexmf.model import FlexMFParameters
from service.ml.flexmf.optim import RowSparseAdam, distinct_rows
from service.ml.flexmf.sampling import NegativeSampler
from service.ml.flexmf.training import FlexMFTrainer


def _data(seed: int = 3) -> Interactions:
    rng = np.random.default_rng(seed)
    n_users, n_items = 40, 30
    codes = np.unique(rng.integers(0, n_users * n_items, 400))
    return Interactions(
        users=(codes // n_items).astype(np.int64),
        items=(codes % n_items).astype(np.int64),
        values=None,
        user_ids=Vocabulary([f"u{i}" for i in range(n_users)]),
        item_ids=Vocabulary([f"i{i}" for i in range(n_items)]),
    )


def _trainer(config: FlexMFImplicitConfig, data: Interactions) -> _ImplicitTrainer:
    params = FlexMFParameters(
        data.n_users,
        data.n_items,
        config.embedding_size,
        user_bias=config.selected_user_bias(),
        item_bias=config.item_bias,
        init_scale=0.3,
        generator=torch.Generator().manual_seed(5),
    )
    users, items = torch.as_tensor(data.users), torch.as_tensor(data.items)
    generator = torch.Generator().manual_seed(9)
    strategy = config.selected_negative_strategy()
    sampler = NegativeSampler(users, items, data.n_items, strategy, generator)
    return _ImplicitTrainer(params, config, users, items, sampler, generator)


@pytest.mark.parametrize(
    "options",
    [
        {"loss": "logistic", "negative_count": 1},
        {"loss": "logistic", "negative_count": 3, "positive_weight": 2.5},
        {"loss": "pairwise", "negative_count": 2},
        {"loss": "pairwise", "negative_count": 1, "user_bias": True, "item_bias": False},
        {"loss": "warp", "negative_count": 2},
    ],
)
def test_closed_form_step_matches_autograd(options: dict[str, Any]) -> None:
    config = FlexMFImplicitConfig(
        embedding_size=6, batch_size=64, regularization=0.05, seed=1, **options
    )
    data = _data()
    hand, auto = _trainer(config, data), _trainer(config, data)
    initial = {k: v.clone() for k, v in hand.model.state_dict().items()}
    rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(2))[:64]
    for _ in range(3):  # several steps: the Adam moments must agree too
        hand_loss = hand.train_step(rows)
        auto_loss = FlexMFTrainer.train_step(auto, rows)
        assert float(hand_loss) == pytest.approx(float(auto_loss), rel=1e-5)
    for name in ("user_table", "item_table"):
        got, want = getattr(hand.model, name), getattr(auto.model, name)
        assert not torch.equal(want, initial[name])
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_distinct_rows_matches_unique() -> None:
    index = torch.tensor([7, 2, 2, 9, 0, 7, 7])
    rows, inverse = distinct_rows(index, 12)
    want_rows, want_inverse = torch.unique(index, return_inverse=True)
    assert torch.equal(rows, want_rows)
    assert torch.equal(inverse, want_inverse)


def test_accumulate_sums_duplicate_rows() -> None:
    table = torch.nn.Parameter(torch.zeros(5, 2))
    optimizer = RowSparseAdam([table], lr=0.1)
    grads = torch.tensor([[1.0, -1.0], [2.0, 2.0], [1.0, -1.0]])
    optimizer.accumulate(table, torch.tensor([3, 1, 3]), grads)
    optimizer.step()
    # Adam's first step moves every touched coordinate by lr against its gradient's sign
    expected = torch.zeros(5, 2)
    expected[1] = torch.tensor([-0.1, -0.1])
    expected[3] = torch.tensor([-0.1, 0.1])
    torch.testing.assert_close(table.detach(), expected)


@pytest.mark.parametrize(
    "options",
    [
        {"loss": "logistic", "negative_count": 1},
        {"loss": "logistic", "negative_count": 3, "positive_weight": 2.5},
        {"loss": "pairwise", "negative_count": 2},
        {"loss": "pairwise", "negative_count": 1, "user_bias": True, "item_bias": False},
        {"loss": "logistic", "negative_count": 1, "user_bias": False, "item_bias": False},
    ],
)
def test_compiled_step_matches_torch_step(options: dict[str, Any]) -> None:
    config = FlexMFImplicitConfig(
        embedding_size=6, batch_size=64, regularization=0.05, seed=1, **options
    )
    data = _data()
    torch_path, compiled_path = _trainer(config, data), _trainer(config, data)
    compiled = compiled_path.compiled
    assert compiled is not None
    rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(2))[:64]
    users, positives = torch.as_tensor(data.users)[rows], torch.as_tensor(data.items)[rows]
    # the torch path's negatives: a sampler like its own, with a generator seeded like its own
    twin = NegativeSampler(
        torch.as_tensor(data.users), torch.as_tensor(data.items), data.n_items, "uniform",
        torch.Generator().manual_seed(9),
    )  # fmt: skip
    for _ in range(3):  # several steps: the Adam moments must agree too
        want = torch_path.train_step(rows)
        negatives = twin.sample(users, config.negative_count)
        items = torch.cat([positives.unsqueeze(1), negatives], 1).numpy()
        (got,) = compiled.train_on(users.numpy(), items, config.learning_rate)
        assert got == pytest.approx(float(want), rel=1e-5)
    compiled.write_back()
    for name in ("user_table", "item_table"):
        got_table, want_table = getattr(compiled_path.model, name), getattr(torch_path.model, name)
        # Adam divides by each gradient's own size: float rounding shows up to ~1e-6
        torch.testing.assert_close(got_table, want_table, rtol=1e-4, atol=1e-5)


def test_compiled_epochs_cover_partial_batches_and_are_seeded() -> None:
    config = FlexMFImplicitConfig(embedding_size=6, batch_size=48, epochs=2, seed=1)
    data = _data()
    first, second = _trainer(config, data), _trainer(config, data)
    assert first.compiled is not None
    losses = first.fit()
    assert losses == second.fit()
    assert first.compiled.steps == 2 * -(-len(data) // 48)
    for name in ("user_table", "item_table"):
        assert torch.equal(getattr(first.model, name), getattr(second.model, name))


def test_compiled_step_is_the_same_on_one_thread() -> None:
    config = FlexMFImplicitConfig(embedding_size=6, batch_size=48, epochs=2, seed=1)
    data = _data()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _trainer(config, data)
        one.fit()
    finally:
        torch.set_num_threads(threads)
    many = _trainer(config, data)
    many.fit()
    for name in ("user_table", "item_table"):
        assert torch.equal(getattr(one.model, name), getattr(many.model, name))


@pytest.mark.parametrize("lookup", ["bits", "search"])
@pytest.mark.parametrize("strategy", ["uniform", "popular"])
def test_compiled_positive_lookup_draws_what_the_bit_set_draws(
    strategy: Any, lookup: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data()
    users, items = torch.as_tensor(data.users), torch.as_tensor(data.items)

    def sampler(user_items: Any) -> NegativeSampler:
        generator = torch.Generator().manual_seed(4)
        return NegativeSampler(
            users, items, data.n_items, strategy, generator, user_items=user_items
        )

    bit_set = sampler(None)
    if lookup == "search":  # no room for the compiled bit set: the search in the users' rows
        monkeypatch.setattr(sampling, "MAX_BITMAP_BYTES", 0)
    compiled = sampler(data.user_csr())
    assert compiled.bitmap is None
    assert bit_set.bitmap is not None
    assert (len(compiled.user_bits) > 0) == (lookup == "bits")
    batch = users[torch.randperm(len(users), generator=torch.Generator().manual_seed(1))]
    for _ in range(3):
        assert torch.equal(compiled.sample(batch, 3), bit_set.sample(batch, 3))
    candidates = torch.randint(data.n_items, (len(batch), 3), generator=torch.Generator())
    assert torch.equal(
        compiled.is_positive(batch, candidates), bit_set.is_positive(batch, candidates)
    )
    # the compiled step's entry point: the same draws again, as arrays
    again, torch_again = sampler(data.user_csr()), sampler(None)
    for _ in range(3):
        drawn = again.sample_array(batch.numpy(), 2)
        assert np.array_equal(drawn, torch_again.sample(batch, 2).numpy())


def test_torch_path_kept_for_misranked_sampling() -> None:
    config = FlexMFImplicitConfig(embedding_size=6, loss="warp", seed=1)
    assert _trainer(config, _data()).compiled is None
