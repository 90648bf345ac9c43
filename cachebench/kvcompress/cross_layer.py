"""Cross-layer KV merging: two adjacent layers' cached states stored as one shared direction per entry plus each
layer's own magnitudes (MiniCache: Liu et al., 2024, "MiniCache: KV Cache Compression in Depth Dimension for Large
Language Models", arXiv:2405.14366).

For one KV head and one token, the two layers' states x¹ (layer l−1) and x² (layer l) are split into magnitude ‖x‖
and direction x/‖x‖. The directions are merged by spherical linear interpolation,

    e = sin((1−t)·Ω)/sin(Ω) · x¹/‖x¹‖ + sin(t·Ω)/sin(Ω) · x²/‖x²‖,    Ω = arccos(x¹·x² / (‖x¹‖·‖x²‖)),

so t = 0 keeps the lower layer's direction and t = 1 the upper one's; e has unit length. A layer is restored as
x̂ = ‖x‖·e. Pairs whose directions lie far apart would be restored badly, so they are retained: with the angular
distance d = Ω/π ∈ [0, 1] and d_min, d_max its extremes over the tokens merged together (per KV head), a token is
retained when d > d_max − γ·(d_max − d_min), i.e. when it lies in the top γ of the distance range (computed as
d − d_min > (1 − γ)·(d_max − d_min), exact at both ends: γ = 0 retains nothing, γ = 1 all but the closest). A retained
token's original vectors for both layers are stored next to its position and written back exactly over the restored
ones.

Storage (`MergedLayer`): the pair's tensors (shared directions of keys and values and the retained positions) live
on the pair's lower layer, which the upper one reaches through `owner`; each layer holds its own magnitudes and
retained originals. Every tensor is therefore an attribute of exactly one layer, so per-layer byte counts
(`tensor_bytes`) add up without counting the shared direction twice. The lower layer is the owner (the paper names
the merged cache after layer l) because a pair is merged from the upper layer's attention hook: the lower layer's
size noted earlier in that forward (its full entries) stays close to what it holds after the merge (the directions
take what its keys and values took), while the upper layer, measured right after the merge, shrinks to magnitudes.
Entries written after a merge stay in an unmerged tail (`keys` / `values`) until the method merges them. `update`
returns transient dense keys/values (restored merged entries, then the tail) for the attention call; they are never
stored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from transformers.cache_utils import DynamicLayer

EPS = 1e-6  # magnitudes below this count as zero; sin(Ω) below it falls back to a normalised linear interpolation


def directions(states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 unit directions (…, d) and magnitudes (…) of `states` along the last dimension (a zero vector keeps a
    zero direction)."""
    x = states.float()
    norms = x.norm(dim=-1)
    return x / norms.clamp_min(EPS).unsqueeze(-1), norms


def slerp(first: torch.Tensor, second: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Spherical interpolation of unit vectors `first` (lower layer) and `second` (upper layer), (…, d), at `t`
    towards `second`; returns the merged unit directions and the angle Ω (…) between the inputs. Where sin(Ω) is
    about 0 (parallel or opposite vectors) the weights 1−t and t of a linear interpolation are used, renormalised."""
    omega = torch.arccos((first * second).sum(dim=-1).clamp(-1.0, 1.0))
    sin = torch.sin(omega)
    curved = sin > EPS
    safe = torch.where(curved, sin, torch.ones_like(sin))
    w_first = torch.where(curved, torch.sin((1.0 - t) * omega) / safe, torch.full_like(sin, 1.0 - t))
    w_second = torch.where(curved, torch.sin(t * omega) / safe, torch.full_like(sin, t))
    merged = w_first.unsqueeze(-1) * first + w_second.unsqueeze(-1) * second
    flat = merged / merged.norm(dim=-1, keepdim=True).clamp_min(EPS)
    return torch.where(curved.unsqueeze(-1), merged, flat), omega


def retained(distance: torch.Tensor, gamma: float) -> torch.Tensor:
    """Boolean (…, L): the entries whose angular distance `distance` (…, L) lies in the top `gamma` of its row's
    range, d > d_max − γ·(d_max − d_min), written d − d_min > (1 − γ)·(d_max − d_min) so that γ = 0 retains nothing
    and γ = 1 everything but the row's minimum exactly; a row whose distances are all equal retains nothing."""
    if distance.shape[-1] == 0:
        return torch.zeros_like(distance, dtype=torch.bool)
    high = distance.amax(dim=-1, keepdim=True)
    low = distance.amin(dim=-1, keepdim=True)
    return distance - low > (1.0 - gamma) * (high - low)


@dataclass
class MergedStates:
    """One merge of L entries of two layers (batch, heads, L, d): what is stored, in the cache's dtype."""

    direction: torch.Tensor  # (batch, heads, L, d) the shared SLERP direction
    first_norms: torch.Tensor  # (batch, heads, L) ‖x¹‖ of the lower layer
    second_norms: torch.Tensor  # (batch, heads, L) ‖x²‖ of the upper layer
    kept_at: torch.Tensor  # (2, n) int32: row (batch · heads + head) and position of each retained entry
    first_kept: torch.Tensor  # (n, d) the lower layer's original vectors of the retained entries
    second_kept: torch.Tensor  # (n, d) the upper layer's
    distance: torch.Tensor  # (batch, heads, L) float32 angular distance Ω/π (not stored by the cache)


def merge_states(first: torch.Tensor, second: torch.Tensor, t: float, gamma: float) -> MergedStates:
    """Merge two adjacent layers' states (batch, heads, L, d) of the same tokens into one direction each, keeping
    both layers' magnitudes and the retained entries' originals (computed in float32, stored in the input dtype)."""
    if first.shape != second.shape:
        raise ValueError(f"merged layers must hold the same entries: {tuple(first.shape)} vs {tuple(second.shape)}")
    u_first, n_first = directions(first)
    u_second, n_second = directions(second)
    direction, omega = slerp(u_first, u_second, t)
    distance = omega / math.pi
    keep = retained(distance, gamma)
    rows, positions = keep.flatten(0, 1).nonzero(as_tuple=True)
    dtype = first.dtype
    return MergedStates(
        direction=direction.to(dtype),
        first_norms=n_first.to(dtype),
        second_norms=n_second.to(dtype),
        kept_at=torch.stack([rows, positions]).to(torch.int32),
        first_kept=first.flatten(0, 1)[rows, positions],
        second_kept=second.flatten(0, 1)[rows, positions],
        distance=distance,
    )


def restore_states(direction: torch.Tensor, norms: torch.Tensor, kept_at: torch.Tensor, kept: torch.Tensor
                   ) -> torch.Tensor:
    """A layer's states from the pair's directions: x̂ = ‖x‖·e for every entry, then the retained entries' originals
    written back at their (row, position). A new dense (batch, heads, L, d) tensor."""
    dense = norms.unsqueeze(-1) * direction
    if kept.shape[0]:
        flat = dense.view(-1, *dense.shape[2:])
        flat[kept_at[0].long(), kept_at[1].long()] = kept
    return dense


def _cat(held: torch.Tensor | None, new: torch.Tensor, dim: int) -> torch.Tensor:
    return new if held is None else torch.cat([held, new], dim=dim)


class MergedLayer(DynamicLayer):
    """A cache layer that may share its first `merged` entries with an adjacent layer (see the module docstring).

    Before its first merge it is a plain DynamicLayer. After, `keys` / `values` hold only the unmerged tail; the
    merged entries are `key_norms` / `value_norms` (this layer's magnitudes) and `key_kept` / `value_kept` (its
    retained originals) over the pair's `key_direction` / `value_direction` and `key_kept_at` / `value_kept_at`,
    which the pair's lower layer holds and the upper one reaches through `owner`."""

    is_croppable = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.merged = 0  # leading entries stored merged
        self.owner: MergedLayer | None = None  # on a pair's upper layer: the lower one, which holds the pair's tensors
        self.key_norms: torch.Tensor | None = None
        self.value_norms: torch.Tensor | None = None
        self.key_kept: torch.Tensor | None = None
        self.value_kept: torch.Tensor | None = None
        self.key_direction: torch.Tensor | None = None  # pair tensors: on the lower layer only
        self.value_direction: torch.Tensor | None = None
        self.key_kept_at: torch.Tensor | None = None
        self.value_kept_at: torch.Tensor | None = None

    @property
    def pair(self) -> MergedLayer:
        """The layer holding this layer's pair tensors (itself on the lower layer)."""
        return self.owner if self.owner is not None else self

    def tail_length(self) -> int:
        """Entries held unmerged after the merged ones."""
        keys = self.keys
        return int(keys.shape[-2]) if isinstance(keys, torch.Tensor) and keys.dim() == 4 else 0

    def restored(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The merged entries as dense keys and values (transient)."""
        pair = self.pair
        return (restore_states(pair.key_direction, self.key_norms, pair.key_kept_at, self.key_kept),
                restore_states(pair.value_direction, self.value_norms, pair.value_kept_at, self.value_kept))

    def dense(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every entry as (batch, heads, merged + tail, d) keys and values: what attention reads (transient)."""
        if not self.merged:
            return self.keys, self.values
        keys, values = self.restored()
        if self.tail_length():
            keys, values = torch.cat([keys, self.keys], dim=-2), torch.cat([values, self.values], dim=-2)
        return keys, values

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.merged:
            return super().update(key_states, value_states, *args, **kwargs)
        # a merge leaves a 4-D tail, possibly empty: concatenating always copies, so the tail owns its storage
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return self.dense()

    def get_seq_length(self) -> int:
        if not self.merged:
            return super().get_seq_length()
        return self.merged + self.tail_length()

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def reset(self) -> None:
        super().reset()
        self.merged, self.owner = 0, None
        self.key_norms = self.value_norms = self.key_kept = self.value_kept = None
        self.key_direction = self.value_direction = self.key_kept_at = self.value_kept_at = None

    def crop(self, tokens_to_remove: int) -> None:
        if self.merged:
            raise NotImplementedError("a layer sharing merged entries with its neighbour cannot be cropped")
        super().crop(tokens_to_remove)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.merged:
            raise NotImplementedError("merged layers serve one sequence (no beam search)")
        super().batch_select_indices(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.merged:
            raise NotImplementedError("merged layers serve one sequence (no beam search)")
        super().batch_repeat_interleave(repeats)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.batch_select_indices(beam_idx)


def merge_tails(lower: MergedLayer, upper: MergedLayer, count: int, t: float, gamma: float
                ) -> tuple[MergedStates, MergedStates] | None:
    """Merge the first `count` tail entries of two adjacent layers (the same tokens in both) and append them to the
    pair's merged entries; the rest of each tail stays unmerged. Returns the keys' and the values' merges (None when
    there is nothing to merge)."""
    if count <= 0:
        return None
    if lower.merged != upper.merged or lower.tail_length() != upper.tail_length():
        raise ValueError(f"layers to merge hold different entries: {lower.merged}+{lower.tail_length()} vs "
                         f"{upper.merged}+{upper.tail_length()}")
    count = min(count, upper.tail_length())
    offset = upper.merged
    merges = []
    for name in ("key", "value"):
        tail_lower, tail_upper = getattr(lower, f"{name}s"), getattr(upper, f"{name}s")
        merged = merge_states(tail_lower[:, :, :count], tail_upper[:, :, :count], t, gamma)
        at = merged.kept_at.clone()
        at[1] += offset  # positions among all of the pair's merged entries
        setattr(lower, f"{name}_direction", _cat(getattr(lower, f"{name}_direction"), merged.direction, dim=2))
        setattr(lower, f"{name}_kept_at", _cat(getattr(lower, f"{name}_kept_at"), at, dim=1))
        for layer, norms, kept in ((lower, merged.first_norms, merged.first_kept),
                                   (upper, merged.second_norms, merged.second_kept)):
            setattr(layer, f"{name}_norms", _cat(getattr(layer, f"{name}_norms"), norms, dim=2))
            setattr(layer, f"{name}_kept", _cat(getattr(layer, f"{name}_kept"), kept, dim=0))
        # the tail's rest is copied out, so the merged entries' old buffer is freed rather than kept alive by a view
        setattr(lower, f"{name}s", tail_lower[:, :, count:].clone())
        setattr(upper, f"{name}s", tail_upper[:, :, count:].clone())
        merges.append(merged)
    upper.owner = lower
    lower.merged += count
    upper.merged += count
    return merges[0], merges[1]


def stored_tensors(layer: Any) -> list[torch.Tensor]:
    """Every tensor a cache layer keeps alive: its own tensor attributes and, for a merged pair's upper layer, the
    pair tensors it reads through `owner` (the same storage as the lower layer's)."""
    found = [v for v in vars(layer).values() if isinstance(v, torch.Tensor)]
    found += [t for v in vars(layer).values() if isinstance(v, (list, tuple)) for t in v if isinstance(t, torch.Tensor)]
    owner = getattr(layer, "owner", None)
    if owner is not None:
        found += [getattr(owner, name) for name in ("key_direction", "value_direction", "key_kept_at", "value_kept_at")
                  if isinstance(getattr(owner, name), torch.Tensor)]
    return found


def distinct_bytes(layers: list[Any]) -> int:
    """Bytes held by the tensors of `layers`, each storage counted once however many layers refer to it (a merged
    pair's shared directions): the storage's full size, so a small view that pins a large buffer counts the buffer."""
    seen: set[int] = set()
    total = 0
    for layer in layers:
        for tensor in stored_tensors(layer):
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if storage.nbytes() == 0 or key in seen:
                continue
            seen.add(key)
            total += storage.nbytes()
    return total
