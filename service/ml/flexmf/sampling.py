"""Negative sampling on the training device: uniform, popularity-weighted and WARP's
misranked sampler, all vectorised over a minibatch (no host round trip per draw)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from service.ml.data import CSR
from service.ml.flexmf.config import NegativeStrategy

EULER_GAMMA = 0.5772156649015329
REDRAW_ROUNDS = 4
"""Rounds of redrawing negatives that turned out to be positives (the rest are kept)."""
MAX_BITMAP_BYTES = 64 << 20
"""Largest bit set of (user, item) pairs for positive checks; beyond it a sorted key search."""
MISRANK_CHUNK = 16
"""Candidates the misranked sampler scores per row in one vectorised step."""
BoolArray = npt.NDArray[np.bool_]


def rank_weight(n_items: int, draws: torch.Tensor) -> torch.Tensor:
    """WARP's weight L(rank): the harmonic number of rank ≈ floor((n_items-1)/draws)."""
    rank = torch.floor((n_items - 1) / draws.clamp(min=1).to(torch.float32)).clamp(min=1)
    return torch.digamma(rank + 1) + EULER_GAMMA


@dataclass
class SamplerStats:
    """Running counts of the misranked sampler (reset per epoch)."""

    rows: int = 0
    draws: float = 0.0
    found: int = 0
    weight: float = 0.0

    @property
    def mean_draws(self) -> float:
        """Average candidates drawn per positive."""
        return self.draws / self.rows if self.rows else math.nan

    @property
    def found_rate(self) -> float:
        """Fraction of positives for which a misranked candidate was found."""
        return self.found / self.rows if self.rows else math.nan

    @property
    def mean_weight(self) -> float:
        """Average rank weight applied to an update (0 where nothing misranked was found)."""
        return self.weight / self.rows if self.rows else math.nan


class NegativeSampler:
    """Draws negative items for users from index tensors on the training device."""

    def __init__(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        n_items: int,
        strategy: NegativeStrategy,
        generator: torch.Generator,
        exclude_positives: bool = True,
        user_items: CSR | None = None,
    ) -> None:
        """With `user_items` (the users' items, ascending per user) on the CPU, positives are
        looked up by compiled code: in a bit set of (user, item) pairs built from them where it
        fits, else by a search in them (instead of the torch bit set or sorted keys)."""
        self.n_items = n_items
        self.strategy = strategy
        self.generator = generator
        self.device = items.device
        self.items = items
        self.keys: torch.Tensor | None = None
        self.bitmap: torch.Tensor | None = None
        self.user_items = user_items if exclude_positives else None
        self.user_bits = np.zeros(0, dtype=np.uint64)
        """The compiled lookup's bit set of (user, item) pairs where it fits (else empty)."""
        csr = self.user_items
        if csr is not None and csr.n_rows * n_items // 64 + 1 <= MAX_BITMAP_BYTES // 8:
            from service.ml.flexmf import cpu_kernel  # compiled on first use, CPU only

            self.user_bits = np.zeros(csr.n_rows * n_items // 64 + 1, dtype=np.uint64)
            cpu_kernel.positive_bits(csr.indptr, csr.indices, n_items, self.user_bits)
        if exclude_positives and user_items is None:
            keys = users * n_items + items
            n_words = (int(users.max()) + 1) * n_items // 64 + 1 if len(users) else 1
            if n_words * 8 <= MAX_BITMAP_BYTES:
                # one bit per (user, item) pair: membership is a gather, shift and mask
                bits = torch.zeros(n_words, dtype=torch.int64, device=self.device)
                unique = torch.unique(keys)
                bits.index_put_((unique >> 6,), torch.bitwise_left_shift(1, unique & 63), True)
                self.bitmap = bits
            else:
                self.keys = torch.unique(keys)  # sorted
        self._totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        self._rows = 0

    def _draw(self, shape: tuple[int, ...]) -> torch.Tensor:
        if self.strategy == "popular":
            # an item of a random interaction: exactly popularity-proportional
            picks = torch.randint(
                len(self.items), shape, generator=self.generator, device=self.device
            )
            return self.items[picks]
        return torch.randint(self.n_items, shape, generator=self.generator, device=self.device)

    def is_positive(self, users: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Whether each candidate (B, c) is among its user's (B,) training items."""
        if self.user_items is not None:
            found = np.ones(tuple(candidates.shape), dtype=np.bool_)
            self._mark_positives(users.numpy(), candidates.numpy(), found)
            return torch.from_numpy(found)
        query = users.unsqueeze(1) * self.n_items + candidates
        if self.bitmap is not None:
            words = self.bitmap[query >> 6]
            return torch.bitwise_right_shift(words, query & 63).bitwise_and_(1).bool()
        if self.keys is None:
            return torch.zeros_like(candidates, dtype=torch.bool)
        pos = torch.searchsorted(self.keys, query).clamp(max=len(self.keys) - 1)
        return self.keys[pos] == query

    def _mark_positives(
        self, users: npt.NDArray[np.int64], candidates: npt.NDArray[np.int64], pending: BoolArray
    ) -> int:
        """Compiled lookup in `user_items`: pending[b, j] becomes whether candidates[b, j] is
        a positive of users[b] where it was set; returns how many are."""
        from service.ml.flexmf import cpu_kernel  # compiled on first use, CPU only

        csr = self.user_items
        assert csr is not None
        return int(
            cpu_kernel.mark_positives(
                users, candidates, csr.indptr, csr.indices, self.user_bits, self.n_items, pending
            )
        )

    def sample_array(self, users: npt.NDArray[np.int64], count: int) -> npt.NDArray[np.int64]:
        """`sample` of users (B,) given as an array on the CPU: the same draws and negatives."""
        if self.user_items is None:
            return self.sample(torch.from_numpy(users), count).numpy()
        candidates: npt.NDArray[np.int64] = self._draw((len(users), count)).numpy()
        pending = np.ones(candidates.shape, dtype=np.bool_)
        for _ in range(REDRAW_ROUNDS):
            # only the entries redrawn last round can have become positives
            if not self._mark_positives(users, candidates, pending):
                break
            np.copyto(candidates, self._draw(candidates.shape).numpy(), where=pending)
        return candidates

    def sample(self, users: torch.Tensor, count: int) -> torch.Tensor:
        """`count` negatives (B, count) per user by the uniform or popular strategy."""
        if self.user_items is not None:
            return torch.from_numpy(self.sample_array(users.numpy(), count))
        candidates = self._draw((len(users), count))
        if self.keys is None and self.bitmap is None:
            return candidates
        redrawn: tuple[torch.Tensor, ...] | None = None
        for _ in range(REDRAW_ROUNDS):
            if redrawn is None:
                bad = self.is_positive(users, candidates)
            else:  # only the entries redrawn last round can have become positives
                bad = torch.zeros_like(candidates, dtype=torch.bool)
                retry = candidates[redrawn].unsqueeze(1)
                bad[redrawn] = self.is_positive(users[redrawn[0]], retry).squeeze(1)
            if not bool(bad.any()):
                break
            candidates = torch.where(bad, self._draw(candidates.shape), candidates)
            redrawn = bad.nonzero(as_tuple=True)
        return candidates

    @torch.no_grad()
    def misranked(
        self,
        users: torch.Tensor,
        user_vectors: torch.Tensor,
        positive_scores: torch.Tensor,
        item_factors: torch.Tensor,
        item_bias: torch.Tensor | None,
        margin: float,
        max_draws: int,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """WARP sampling: per row, uniform candidates until one scores above the positive
        minus `margin` (at most `max_draws`). Returns the chosen negative (B,) (the best scoring
        candidate where none was misranked), the number of draws (B,) and whether one was found.
        """
        n = len(users)
        chosen = torch.zeros(n, dtype=torch.long, device=self.device)
        best = torch.full((n,), -torch.inf, device=self.device)
        draws = torch.full((n,), max_draws, dtype=torch.long, device=self.device)
        found = torch.zeros(n, dtype=torch.bool, device=self.device)
        active = torch.arange(n, device=self.device)
        drawn = 0
        while drawn < max_draws and len(active):
            width = min(MISRANK_CHUNK, max_draws - drawn)
            a_users = users[active]
            cand = torch.randint(
                self.n_items, (len(active), width), generator=self.generator, device=self.device
            )
            scores = (user_vectors[active].unsqueeze(1) * item_factors[cand]).sum(-1)
            if item_bias is not None:
                scores = scores + item_bias[cand]
            scores = scores.masked_fill(self.is_positive(a_users, cand), -torch.inf)
            hit = scores > (positive_scores[active] - margin).unsqueeze(1)
            any_hit = hit.any(dim=1)
            first = torch.argmax(hit.to(torch.int8), dim=1)
            top_idx = scores.argmax(dim=1)
            pick = torch.where(any_hit, first, top_idx)
            pick_score = scores.gather(1, pick.unsqueeze(1)).squeeze(1)
            better = any_hit | (pick_score > best[active])
            rows = active[better]
            chosen[rows] = cand[better, pick[better]]
            best[rows] = pick_score[better]
            hit_rows = active[any_hit]
            draws[hit_rows] = drawn + first[any_hit] + 1
            found[hit_rows] = True
            active = active[~any_hit]
            drawn += width
        return chosen, draws, found

    def record(self, draws: torch.Tensor, found: torch.Tensor, weights: torch.Tensor) -> None:
        """Add one batch's misranked-sampler outcome to the running totals (on the device)."""
        batch = torch.stack([draws.sum(), found.sum(), weights.sum()]).to(torch.float64)
        self._totals += batch
        self._rows += len(draws)

    def take_stats(self) -> SamplerStats:
        """The statistics since the last call, and reset them."""
        draws, found, weight = (float(v) for v in self._totals.cpu())
        stats = SamplerStats(rows=self._rows, draws=draws, found=int(found), weight=weight)
        self._totals.zero_()
        self._rows = 0
        return stats
