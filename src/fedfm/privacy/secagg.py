"""Secure aggregation (SecAgg, Bonawitz et al., CCS 2017): the server learns only the sum.

Every client masks its fixed-point vector with a pairwise mask per other cohort member (a
ChaCha20 stream seeded by an X25519 key agreement; the two members add it with opposite
signs, so it cancels in the sum) and a self mask. Its mask-key secret and self-mask seed are
Shamir-shared among the cohort (shares encrypted with AES-GCM under a second agreed key), so
when a member drops after the keys are exchanged, any ``t`` survivors rebuild its key and
the server removes its pairwise masks; the survivors' self masks are rebuilt the same way.
This is the complete-graph protocol; SecAgg+ (Bell et al., 2020) thins it to a random
``O(log n)`` neighbourhood, which this module does not do yet.

Values are clamped to ``[-clip, clip]``, weighted, stochastically rounded to integers and
summed in the ring of 32-bit integers; with weights summing to 1, the sum never wraps.

The simulator runs both halves in one process; each method below is one protocol message,
so a networked deployment sends the same bytes.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedfm.errors import FedFMError
from fedfm.privacy import shamir

RING_BITS = 32
_RAW = serialization.Encoding.Raw


class SecAggError(FedFMError):
    """Secure aggregation cannot finish (too few survivors, a bad share)."""


# ---------------------------------------------------------------- fixed point in the ring


def fixed_point_scale(clip: float, cohort: int) -> float:
    """Integers per unit so that a weighted sum of ``cohort`` values in ``[-clip, clip]``
    (weights summing to 1, one rounding step each) stays inside the signed 32-bit range."""
    return (2 ** (RING_BITS - 1) - 1 - cohort) / clip


def encode(values: np.ndarray, scale: float, rng: np.random.Generator) -> np.ndarray:
    """Stochastic rounding of ``values * scale`` into the ring (uint32; unbiased)."""
    scaled = values.astype(np.float64) * scale
    low = np.floor(scaled)
    rounded = low + (rng.random(scaled.shape) < (scaled - low))
    return rounded.astype(np.int64).astype(np.uint32)  # two's complement wrap


def decode(ring: np.ndarray, scale: float) -> np.ndarray:
    """Ring elements back to floats (the top half of the ring is negative)."""
    return ring.astype(np.uint32).view(np.int32).astype(np.float64) / scale


# ---------------------------------------------------------------- key agreement and masks


def _derive(shared: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(shared)


def prg(seed: bytes, length: int) -> np.ndarray:
    """``length`` pseudo-random ring elements: the ChaCha20 keystream of a 32-byte seed."""
    stream = Cipher(algorithms.ChaCha20(seed, b"\0" * 16), mode=None).encryptor()
    return np.frombuffer(stream.update(b"\0" * (4 * length)), dtype=np.uint32)


def _pair_seed(private: X25519PrivateKey, public: bytes) -> bytes:
    return _derive(private.exchange(X25519PublicKey.from_public_bytes(public)), b"fedfm-mask")


def _private_int(key: X25519PrivateKey) -> int:
    return int.from_bytes(
        key.private_bytes(_RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()),
        "big",
    )


def _private_key(value: int) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(value.to_bytes(32, "big"))


@dataclass(frozen=True)
class Keys:
    """A client's advertised public keys: for pairwise masks and for encrypting shares."""

    mask: bytes
    channel: bytes

    @property
    def nbytes(self) -> int:
        return len(self.mask) + len(self.channel)


@dataclass
class SecAggClient:
    """One cohort member's half of the protocol (fresh keys every round)."""

    id: int
    mask_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    channel_key: X25519PrivateKey = field(default_factory=X25519PrivateKey.generate)
    self_seed: bytes = field(default_factory=lambda: os.urandom(32))
    own_share: tuple[int, int] = (0, 0)  # its own share of its self seed

    def advertise(self) -> Keys:
        """Message 1: public keys."""
        return Keys(
            self.mask_key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw),
            self.channel_key.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw),
        )

    def _channel(self, roster: dict[int, Keys], other: int) -> AESGCM:
        shared = self.channel_key.exchange(X25519PublicKey.from_public_bytes(roster[other].channel))
        return AESGCM(_derive(shared, b"fedfm-channel"))

    def share(self, roster: dict[int, Keys], threshold: int) -> dict[int, bytes]:
        """Message 2: to every other member, an encrypted share of the mask key and seed."""
        ids = sorted(roster)
        key_shares = shamir.split(_private_int(self.mask_key), len(ids), threshold)
        seed_shares = shamir.split(int.from_bytes(self.self_seed, "big"), len(ids), threshold)
        out = {}
        for j, (ks, ss) in zip(ids, zip(key_shares, seed_shares, strict=True), strict=True):
            if j == self.id:
                continue
            header = self.id.to_bytes(4, "big") + j.to_bytes(4, "big") + ks[0].to_bytes(4, "big")
            nonce = os.urandom(12)
            body = shamir.to_bytes(ks[1]) + shamir.to_bytes(ss[1])
            out[j] = nonce + self._channel(roster, j).encrypt(nonce, header + body, None)
        own = ids.index(self.id)
        self.own_share = (own + 1, seed_shares[own][1])  # kept, not sent
        return out

    def mask(self, values: np.ndarray, roster: dict[int, Keys]) -> np.ndarray:
        """Message 3: the ring vector plus the self mask and every pairwise mask."""
        masked = values.astype(np.uint32) + prg(self.self_seed, len(values))
        for j, keys in roster.items():
            if j == self.id:
                continue
            pair = prg(_pair_seed(self.mask_key, keys.mask), len(values))
            masked = masked + pair if j > self.id else masked - pair
        return masked

    def reveal(
        self, roster: dict[int, Keys], inbox: dict[int, bytes], survivors: set[int]
    ) -> dict[int, tuple[int, int]]:
        """Message 4: per member, its share ``(x, y)`` of the self seed (a survivor) or of the
        mask key (a dropped member); never both for the same member."""
        out = {}
        for sender, blob in inbox.items():
            plain = self._channel(roster, sender).decrypt(blob[:12], blob[12:], None)
            if (
                int.from_bytes(plain[:4], "big") != sender
                or int.from_bytes(plain[4:8], "big") != self.id
            ):
                raise SecAggError(f"client {self.id} got a share not meant for it from {sender}")
            x = int.from_bytes(plain[8:12], "big")
            key_y = shamir.from_bytes(plain[12 : 12 + shamir.SHARE_BYTES])
            seed_y = shamir.from_bytes(plain[12 + shamir.SHARE_BYTES :])
            out[sender] = (x, seed_y if sender in survivors else key_y)
        out[self.id] = self.own_share
        return out


def unmask(
    total: np.ndarray,
    roster: dict[int, Keys],
    survivors: set[int],
    revealed: dict[int, dict[int, tuple[int, int]]],
    threshold: int,
) -> np.ndarray:
    """The server's last step: the plain ring sum of the survivors' vectors.

    Args:
        total: the sum of the survivors' masked vectors.
        roster: every member that advertised keys.
        survivors: members whose masked vector arrived.
        revealed: per responding survivor, its shares (``SecAggClient.reveal``).
        threshold: shares needed to rebuild a secret.
    """
    if len(revealed) < threshold:
        raise SecAggError(
            f"secure aggregation needs {threshold} surviving clients to unmask, got "
            f"{len(revealed)} of {len(roster)} (at most {len(roster) - threshold} may drop): "
            "lower secagg.threshold or raise the cohort size"
        )
    plain = total.astype(np.uint32).copy()
    length = len(plain)
    for member in sorted(roster):
        shares = [r[member] for r in revealed.values() if member in r][:threshold]
        if len(shares) < threshold:
            raise SecAggError(f"only {len(shares)} shares for client {member}; need {threshold}")
        secret = shamir.combine(shares)
        if member in survivors:
            plain = plain - prg(secret.to_bytes(32, "big"), length)
            continue
        key = _private_key(secret)  # a dropped member: remove its pairs with the survivors
        for u in survivors:
            pair = prg(_pair_seed(key, roster[u].mask), length)
            plain = plain - pair if member > u else plain + pair
    return plain


@dataclass(frozen=True)
class SecAggResult:
    mean: np.ndarray  # the weighted mean of the survivors' vectors
    survivors: list[int]
    dropped: list[int]
    bytes_up: int  # protocol bytes from all clients beyond the plain vector (keys, shares)
    bytes_down: int  # roster and forwarded shares the server sends
    seconds: float  # wall time of the protocol (both halves)
    clamped: int  # coordinates cut to [-clip, clip]


def secure_weighted_mean(
    vectors: dict[int, np.ndarray],
    weights: dict[int, float],
    *,
    clip: float,
    threshold: float,
    drop: set[int],
    seed: int,
) -> SecAggResult:
    """Run the protocol over one cohort: ``vectors`` by client id, ``drop`` the members that
    vanish after sharing their keys. Returns the weighted mean of the survivors."""
    start = time.perf_counter()
    ids = sorted(vectors)
    m = len(ids)
    t = max(2, math.ceil(threshold * m))
    if m < 3 or t > m:
        raise SecAggError(
            f"secure aggregation needs a cohort of at least 3 and a threshold of at most the "
            f"cohort; got cohort {m}, threshold {t}: raise strategy.fraction or lower "
            "secagg.threshold"
        )
    clients = {i: SecAggClient(i) for i in ids}
    roster = {i: c.advertise() for i, c in clients.items()}
    inboxes: dict[int, dict[int, bytes]] = {i: {} for i in ids}
    share_bytes = 0
    for i, c in clients.items():
        for j, blob in c.share(roster, t).items():
            inboxes[j][i] = blob
            share_bytes += len(blob)
    survivors = {i for i in ids if i not in drop}
    total_weight = sum(weights[i] for i in ids)
    scale = fixed_point_scale(clip, m)
    rng = np.random.default_rng(seed)
    total = np.zeros(len(vectors[ids[0]]), dtype=np.uint32)
    clamped = 0
    for i in sorted(survivors):
        v = vectors[i]
        clamped += int(np.count_nonzero(np.abs(v) > clip))
        ring = encode(np.clip(v, -clip, clip) * (weights[i] / total_weight), scale, rng)
        total = total + clients[i].mask(ring, roster)
    revealed = {u: clients[u].reveal(roster, inboxes[u], survivors) for u in sorted(survivors)}
    plain = unmask(total, roster, survivors, revealed, t)
    kept = sum(weights[i] for i in survivors) / total_weight
    mean = decode(plain, scale) / kept
    key_bytes = sum(k.nbytes for k in roster.values())
    reveal_bytes = sum(len(r) * (4 + shamir.SHARE_BYTES) for r in revealed.values())
    return SecAggResult(
        mean=mean,
        survivors=sorted(survivors),
        dropped=sorted(set(ids) - survivors),
        bytes_up=key_bytes + share_bytes + reveal_bytes,
        bytes_down=m * key_bytes + share_bytes,
        seconds=time.perf_counter() - start,
        clamped=clamped,
    )


def flatten(params: dict[str, torch.Tensor]) -> np.ndarray:
    return np.concatenate(
        [v.detach().cpu().to(torch.float64).reshape(-1).numpy() for v in params.values()]
    )


def unflatten(vector: np.ndarray, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out, offset = {}, 0
    for name, ref in like.items():
        n = ref.numel()
        out[name] = (
            torch.from_numpy(vector[offset : offset + n].copy()).reshape(ref.shape).to(ref.dtype)
        )
        offset += n
    return out
