"""ALS specifics: batched row solves against dense per-row solves, CG against Cholesky."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from service.ml.als import (
    BiasedALS,
    BiasedALSConfig,
    ImplicitALS,
    ImplicitALSConfig,
    _common,
    _implicit,
)
from service.ml.als._implicit import _SideSolver
from service.ml.als._native import NativeRows
from service.ml.als._rows import SparseRows, build_plan
from service.ml.base import TrainingProgress
from service.ml.data import Interactions, Vocabulary, build_csr
from tests.ml.tiny_data import grouped_ratings

CPU = torch.device("cpu")


def _binary(seed: int = 0, n_users: int = 30, n_items: int = 20) -> Interactions:
    rng = np.random.default_rng(seed)
    present = rng.random((n_users, n_items)) < 0.3
    present[3] = False  # a user without interactions
    users, items = np.nonzero(present)
    return Interactions(
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        values=np.full(len(users), 4.0, dtype=np.float32),
        user_ids=Vocabulary([f"u{i}" for i in range(n_users)]),
        item_ids=Vocabulary([f"i{i}" for i in range(n_items)]),
    )


def _dense_implicit_rows(data: Interactions, fixed: torch.Tensor, reg: float, weight: float):  # type: ignore[no-untyped-def]
    preference = torch.zeros((data.n_users, data.n_items))
    preference[torch.as_tensor(data.users), torch.as_tensor(data.items)] = 1.0
    confidence = 1.0 + weight * preference
    eye = torch.eye(fixed.shape[1])
    return torch.stack(
        [
            torch.linalg.solve(
                fixed.T @ torch.diag(confidence[r]) @ fixed + reg * eye,
                fixed.T @ (confidence[r] * preference[r]),
            )
            for r in range(data.n_users)
        ]
    )


def test_plan_chunks_cover_each_nonempty_row_once() -> None:
    data = grouped_ratings()
    plan = build_plan(data.user_csr(), 8, CPU, chunk_elements=1 << 12)
    rows = torch.cat([chunk.rows for chunk in plan.chunks])
    assert len(plan.chunks) > 1
    assert sorted(rows.tolist()) == sorted(np.flatnonzero(data.user_csr().counts()).tolist())
    for chunk in plan.chunks:
        assert torch.equal(chunk.mask.sum(dim=1), chunk.counts)


def _lexsort_layout(
    rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reference CSR layout: entries ordered by (row, column) with a two-key lexsort."""
    order = np.lexsort((cols, rows))
    indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))])
    return indptr, cols[order], values[order]


def test_build_csr_matches_a_two_key_lexsort_on_shuffled_input() -> None:
    data = _binary(seed=3)
    order = np.random.default_rng(1).permutation(len(data))
    values = np.arange(len(data), dtype=np.float32)[order]  # distinct: a misplaced value shows
    users, items = data.users[order], data.items[order]
    shuffled = Interactions(users, items, values, data.user_ids, data.item_ids)
    for built, expected in [
        (
            build_csr(users, items, values, data.n_users, data.n_items),
            _lexsort_layout(users, items, values, data.n_users),
        ),
        (shuffled.item_csr(), _lexsort_layout(items, users, values, data.n_items)),
    ]:
        assert np.array_equal(built.indptr, expected[0])
        assert np.array_equal(built.indices, expected[1])
        assert built.values is not None
        assert np.array_equal(built.values, expected[2])
    assert build_csr(users, items, None, data.n_users, data.n_items).values is None


@pytest.fixture(params=["native", "torch"])
def cpu_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the compiled CPU kernels and again on the torch path CUDA uses."""
    if request.param == "torch":
        monkeypatch.setattr(_common, "use_native", lambda device: False)
    return str(request.param)


@pytest.mark.parametrize("solver", ["cholesky", "cg", "native"])
def test_implicit_half_sweep_matches_dense_solves(solver: str) -> None:
    data = _binary()
    fixed = torch.randn(data.n_items, 4, generator=torch.Generator().manual_seed(1))
    values = np.full(len(data), 40.0, dtype=np.float32)
    weighted = Interactions(data.users, data.items, values, data.user_ids, data.item_ids)
    expected = _dense_implicit_rows(data, fixed, 0.1, 40.0)
    target = torch.zeros(data.n_users, 4)
    solve = _SideSolver(0.1, "cholesky" if solver == "cholesky" else "cg", cg_steps=4)
    if solver == "cholesky":
        solve(build_plan(weighted.user_csr(), 4, CPU), fixed, target)
        torch.testing.assert_close(target, expected, atol=1e-4, rtol=1e-4)
    else:
        # k steps of exact-arithmetic CG solve a k-dimensional system; warm starts converge
        csr = weighted.user_csr()
        assert csr.values is not None
        side = SparseRows(csr, CPU) if solver == "cg" else NativeRows(csr, csr.values, 4)
        for _ in range(3):
            solve(side, fixed, target)
        torch.testing.assert_close(target, expected, atol=1e-3, rtol=1e-3)


def test_native_and_torch_cg_train_the_same_model(monkeypatch: pytest.MonkeyPatch) -> None:
    data = grouped_ratings()
    monkeypatch.setattr(_implicit, "NATIVE_MIN_WORK", 0)  # tiny data: force the kernel
    config = ImplicitALSConfig(embedding_size=8, epochs=4, device="cpu", seed=5)
    native, native_losses = ImplicitALS(config), []
    native.fit(data, progress=lambda p: native_losses.append(p.loss))
    monkeypatch.setattr(_common, "use_native", lambda device: False)
    reference, reference_losses = ImplicitALS(config), []
    reference.fit(data, progress=lambda p: reference_losses.append(p.loss))
    users = torch.arange(data.n_users)
    torch.testing.assert_close(
        native.score_users(users), reference.score_users(users), atol=1e-4, rtol=1e-3
    )
    assert native_losses == pytest.approx(reference_losses, rel=1e-4)


@pytest.mark.parametrize("bias_updates", [True, False])
def test_native_and_torch_biased_solves_agree(
    bias_updates: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = grouped_ratings()
    config = BiasedALSConfig(embedding_size=6, epochs=4, bias_updates=bias_updates)
    native, native_losses = BiasedALS(config), []
    native.fit(data, progress=lambda p: native_losses.append(p.loss))
    monkeypatch.setattr(_common, "use_native", lambda device: False)
    reference, reference_losses = BiasedALS(config), []
    reference.fit(data, progress=lambda p: reference_losses.append(p.loss))
    users = torch.arange(data.n_users)
    torch.testing.assert_close(
        native.score_users(users), reference.score_users(users), atol=1e-4, rtol=1e-3
    )
    assert native_losses == pytest.approx(reference_losses, rel=1e-4)


def test_cg_and_cholesky_models_agree(cpu_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = grouped_ratings()
    monkeypatch.setattr(_implicit, "NATIVE_MIN_WORK", 0)
    base = {"embedding_size": 8, "epochs": 5, "device": "cpu", "seed": 3}
    exact = ImplicitALS(ImplicitALSConfig(solver="cholesky", **base))
    iterative = ImplicitALS(ImplicitALSConfig(solver="cg", cg_steps=8, **base))
    exact.fit(data)
    iterative.fit(data)
    users = torch.arange(data.n_users)
    torch.testing.assert_close(
        iterative.score_users(users), exact.score_users(users), atol=2e-3, rtol=2e-2
    )


def test_cholesky_fold_in_reproduces_trained_user_exactly() -> None:
    data = grouped_ratings()
    model = ImplicitALS(ImplicitALSConfig(embedding_size=8, epochs=4, solver="cholesky"))
    model.fit(data)
    csr = data.user_csr()
    for user in (0, 17, 42):
        items, _ = csr.row(user)
        folded = model.fold_in(items)
        trained, _ = model.user_parameters(torch.tensor([user]))
        torch.testing.assert_close(folded.embedding, trained[0], atol=1e-4, rtol=1e-3)


def test_exact_implicit_loss_never_increases() -> None:
    losses: list[float] = []
    model = ImplicitALS(ImplicitALSConfig(embedding_size=8, epochs=6, solver="cholesky"))
    model.fit(grouped_ratings(), progress=lambda p: losses.append(p.loss))
    assert all(b <= a + 1e-6 * abs(a) for a, b in itertools.pairwise(losses))


@pytest.mark.parametrize("bias_updates", [True, False])
def test_biased_fold_in_reproduces_trained_user(bias_updates: bool, cpu_path: str) -> None:
    data = grouped_ratings()
    config = BiasedALSConfig(embedding_size=6, epochs=5, bias_updates=bias_updates)
    model = BiasedALS(config)
    model.fit(data)
    csr = data.user_csr()
    for user in (1, 30, 77):
        items, ratings = csr.row(user)
        folded = model.fold_in(items, ratings)
        trained, bias = model.user_parameters(torch.tensor([user]))
        torch.testing.assert_close(folded.embedding, trained[0], atol=1e-4, rtol=1e-3)
        assert folded.bias == pytest.approx(float(bias[0]), abs=1e-4)


def test_fixed_biases_are_lenskit_damped_means() -> None:
    data = grouped_ratings()
    model = BiasedALS(BiasedALSConfig(embedding_size=4, epochs=1, bias_updates=False))
    model.fit(data)
    assert data.values is not None
    mean = float(data.values.mean())
    item = 5
    ratings = data.values[data.items == item]
    expected = (ratings - mean).sum() / (len(ratings) + 5.0)
    assert float(model.item_parameters().bias[item]) == pytest.approx(expected, abs=1e-5)
    assert model.item_parameters().global_bias == pytest.approx(mean)


def test_biased_learns_and_accepts_separate_regularization(cpu_path: str) -> None:
    data = grouped_ratings()
    reports: list[TrainingProgress] = []
    config = BiasedALSConfig.model_validate(
        {"embedding_size": 6, "epochs": 5, "regularization": {"user": 0.05, "item": 0.2}}
    )
    BiasedALS(config).fit(data, progress=reports.append)
    assert reports[-1].loss < reports[0].loss < 1.0
    with pytest.raises(ValueError, match="greater than 0"):
        BiasedALSConfig(regularization=0.0)


def test_biased_fold_in_needs_ratings_and_implicit_data_is_rejected() -> None:
    data = grouped_ratings()
    model = BiasedALS(BiasedALSConfig(embedding_size=4, epochs=1))
    model.fit(data)
    with pytest.raises(ValueError, match="ratings"):
        model.fold_in(np.array([1, 2], dtype=np.int64))
    implicit = Interactions(data.users, data.items, None, data.user_ids, data.item_ids)
    with pytest.raises(ValueError, match="explicit ratings"):
        BiasedALS().fit(implicit)
    empty = model.fold_in(np.array([-1], dtype=np.int64), np.array([4.0], dtype=np.float32))
    assert float(empty.embedding.abs().sum()) == 0.0
    assert empty.bias == 0.0
