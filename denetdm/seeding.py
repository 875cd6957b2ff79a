"""Every random choice is drawn from a stream named by (seed, purpose), so seed 0 is as good as any."""

import hashlib

import torch


def derive_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose, derived from the config seed."""
    digest = hashlib.sha256(f"{int(seed)}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def generator(seed: int, purpose: str) -> torch.Generator:
    """A CPU generator for one purpose: changing one part of the protocol (say the validation size) does not
    reshuffle the others."""
    return torch.Generator().manual_seed(derive_seed(seed, purpose))
