"""Shamir secret sharing over the prime field GF(2^521 - 1): any ``t`` of ``n`` shares
rebuild the secret, fewer reveal nothing about it."""

from __future__ import annotations

import secrets

PRIME = 2**521 - 1  # a Mersenne prime: holds any 32-byte secret as one field element
SHARE_BYTES = 66  # a field element, big-endian


def split(secret: int, n: int, t: int) -> list[tuple[int, int]]:
    """``n`` shares ``(x, f(x))`` of ``secret`` with a random degree ``t - 1`` polynomial ``f``.

    Example:
        >>> shares = split(42, n=5, t=3)
        >>> combine(shares[:3]), combine(shares[2:])
        (42, 42)
    """
    if not 1 <= t <= n:
        raise ValueError(f"threshold t = {t} must be in [1, n = {n}]")
    if not 0 <= secret < PRIME:
        raise ValueError("secret must be a field element in [0, 2^521 - 1)")
    coefficients = [secret] + [secrets.randbelow(PRIME) for _ in range(t - 1)]
    shares = []
    for x in range(1, n + 1):
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares.append((x, y))
    return shares


def combine(shares: list[tuple[int, int]]) -> int:
    """The secret (``f(0)``) from at least ``t`` distinct shares, by Lagrange interpolation."""
    xs = [x for x, _ in shares]
    if len(set(xs)) != len(xs):
        raise ValueError(f"shares must have distinct x, got {xs}")
    secret = 0
    for i, (xi, yi) in enumerate(shares):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * -xj % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    return secret


def to_bytes(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def from_bytes(data: bytes) -> int:
    return int.from_bytes(data, "big")
