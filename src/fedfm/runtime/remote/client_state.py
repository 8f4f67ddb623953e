"""A remote client's own state, kept on its own disk so that a crash loses none of it.

Between rounds a client keeps what the simulator keeps for it: the strategy's client state
(SCAFFOLD's control variate), its personal tensors (a local head, FedSA-LoRA's B) and its
update pipeline's state (the error-feedback residual). None of it goes to the server. The
store writes it after every round the client trains in, atomically, one file per round::

    DIR/RUN_ID/round-000007.safetensors

``RUN_ID`` names one server run (a resumed run keeps it, a fresh one gets a new one). For a
task of round ``t`` the client starts from the newest state of a round before ``t``: a
server resumed from an older checkpoint redoes its rounds, and the client redoes its own
with the states it had the first time, so the run matches an uninterrupted one. The newest
``keep`` files are kept (a checkpoint every ``k`` rounds needs ``k + 1``). A client with no
state to keep (FedAvg without compression) writes nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

from safetensors.torch import load_file

from fedfm.client.state import ClientState
from fedfm.errors import FedFMError
from fedfm.io import atomic_write_bytes
from fedfm.models.params import Params
from fedfm.runtime.remote.codec import encode_groups, split_groups
from fedfm.runtime.remote.security import CLIENT_ID

GROUPS = ("state", "personal", "pipeline")
RUN_ID = re.compile(r"[0-9a-f]{1,64}")  # what the server's run_id file holds (token_hex)


def state_folder(state_dir: Path | None, client_id: str, run: str) -> Path | None:
    """``state_dir/client_id/run``, or None (memory only) without a folder or a run id.

    Raises:
        FedFMError: a run id that is not hex digits, or a client id with other characters
            than a credentials file allows: each names a folder on this machine.
    """
    if state_dir is None or not run:
        return None
    if not CLIENT_ID.fullmatch(client_id):
        raise FedFMError(f"client id {client_id[:80]!r} cannot name a folder under --state-dir")
    if not RUN_ID.fullmatch(run):
        raise FedFMError(
            f"the server sent run id {run!r}; a run id is hex digits and names a folder "
            "under --state-dir, so this client refuses it (is the server a fedfm server?)"
        )
    return state_dir / client_id / run


class ClientStateStore:
    """One client's states by round, in memory and (with a folder) on disk.

    Example:
        >>> import torch
        >>> store = ClientStateStore(folder=None)
        >>> store.save(3, ClientState(strategy={"c": torch.ones(2)}))
        >>> store.before(3).strategy, store.before(4).strategy
        ({}, {'c': tensor([1., 1.])})
    """

    def __init__(self, folder: Path | None, *, keep: int = 2) -> None:
        self.folder, self.keep = folder, max(keep, 1)
        # round -> its states by group (None: on disk only)
        self.saved: dict[int, dict[str, Params] | None] = {}
        if folder is not None and folder.is_dir():
            for path in folder.glob("round-*.safetensors"):
                self.saved[int(path.stem.removeprefix("round-"))] = None

    def _path(self, round_: int) -> Path:
        assert self.folder is not None
        return self.folder / f"round-{round_:06d}.safetensors"

    def before(self, round_: int) -> ClientState:
        """The states this client held before round ``round_`` (empty before its first)."""
        earlier = [r for r in self.saved if r < round_]
        if not earlier:
            return ClientState()
        newest = max(earlier)
        groups = self.saved[newest]
        if groups is None:
            groups = self.saved[newest] = split_groups(load_file(self._path(newest)), GROUPS)
        return ClientState(*(groups.get(group, {}) for group in GROUPS))

    def save(self, round_: int, state: ClientState) -> None:
        """Keep the states this client holds after round ``round_``."""
        values = (state.strategy, state.personal, state.pipeline)
        groups = {group: v for group, v in zip(GROUPS, values, strict=True) if v}
        if not groups:
            return
        self.saved[round_] = groups
        if self.folder is not None:
            atomic_write_bytes(self._path(round_), encode_groups(groups))
        for old in sorted(self.saved)[: -self.keep]:
            del self.saved[old]
            if self.folder is not None:
                self._path(old).unlink(missing_ok=True)
