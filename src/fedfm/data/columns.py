"""A dataset file's Arrow columns as the small numpy arrays fedfm keeps: labels, groups, splits.

Every conversion is vectorised in Arrow (``unique`` then ``index_in``): a million rows cost
a few int arrays, never a Python object per row.

Label names are kept in id order: the column's ``ClassLabel`` names if it has them, else
integer labels sorted numerically (names ``"0"``, ``"3"``, ...; ids are their ranks) or
string labels sorted. Declared names (``data.label_names``, or a remote server's) fix the
order instead; a value then matches a name, or else an integer id below their count.

Example:
    >>> import pyarrow as pa
    >>> ids, names = label_ids(pa.chunked_array([["pos", "neg", "pos"]]), what="x.csv")
    >>> ids.tolist(), names
    ([1, 0, 1], ('neg', 'pos'))
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fedfm.errors import ConfigError
from fedfm.resources.types import Conversation, PreferencePair

_SHOWN = 12  # values listed in a message before eliding


def first_null_row(column: pa.ChunkedArray) -> int | None:
    """The 1-based row of the column's first missing value, or ``None`` if none is missing."""
    if column.null_count == 0:
        return None
    return int(pc.index(pc.is_null(column), True).as_py()) + 1


def check_text(column: pa.ChunkedArray, *, key: str, name: str, what: str) -> None:
    """Refuse a text column that is not text or has a missing value.

    Args:
        key: the config key that named it, e.g. ``"text_column"``.
        name: the column's name.
        what: the file as the user named it, for messages.
    """
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ConfigError(
            f"{what}: data.{key} = {name!r} holds {column.type} values, not text: set "
            f"data.{key} to the column that holds the text"
        )
    row = first_null_row(column)
    if row is not None:
        raise ConfigError(
            f"{what}: row {row} has no {name!r} (data.{key}); fill it in or drop the row"
        )


def label_ids(
    column: pa.ChunkedArray,
    *,
    what: str,
    name: str = "label",
    class_names: tuple[str, ...] = (),
    declared: tuple[str, ...] = (),
    declared_by: str = "data.label_names",
) -> tuple[np.ndarray, tuple[str, ...]]:
    """Class ids (int64) of every row, and the label names in id order.

    Args:
        column: the label column.
        what: the file as the user named it, for messages.
        name: the column's name, for messages.
        class_names: the column's ``ClassLabel`` names, if it has a ``ClassLabel`` type.
        declared: label names to map onto, in id order (``()``: derive them from the data).
        declared_by: where ``declared`` came from, for messages.

    Raises:
        ConfigError: a missing label, labels that are neither names nor integers, or
            (with ``declared``) labels that are not among the declared names.
    """
    row = first_null_row(column)
    if row is not None:
        raise ConfigError(f"{what}: row {row} has no label ({name!r}); fill it in or drop the row")
    if class_names:
        column = _class_label_names(column, class_names, what=what, name=name)
    uniques = pc.unique(column)
    values = _label_values(uniques, what=what, name=name)
    names = declared or class_names or tuple(str(v) for v in sorted(values))
    ids = [_id_of(v, names) for v in values]
    unknown = [v for v, i in zip(values, ids, strict=True) if i is None]
    if unknown:
        raise ConfigError(
            f"{what}: column {name!r} holds the labels {_listed(values)}, but the label names "
            f"are {list(names)} ({declared_by}) and {_listed(unknown)} are not among them; "
            "relabel those rows with one of the names (or their ids 0..K-1)"
        )
    lut = np.asarray(ids, dtype=np.int64)
    positions = pc.index_in(column, value_set=uniques).to_numpy(zero_copy_only=False)
    return lut[positions], names


def _listed(values: list[Any]) -> str:
    """Sorted values as a short list, elided after a dozen."""
    shown = sorted(str(v) for v in values)
    more = f" and {len(shown) - _SHOWN} more" if len(shown) > _SHOWN else ""
    return f"{shown[:_SHOWN]}{more}"


def _class_label_names(
    column: pa.ChunkedArray, class_names: tuple[str, ...], *, what: str, name: str
) -> pa.ChunkedArray:
    """A ``ClassLabel`` column's ids replaced by their names (checked to be in range)."""
    ids = column.cast(pa.int64())
    low, high = pc.min_max(ids).as_py().values()
    if low < 0 or high >= len(class_names):
        raise ConfigError(
            f"{what}: column {name!r} holds class id {low if low < 0 else high}, outside its "
            f"ClassLabel names {list(class_names)}; fix the ids or the ClassLabel names"
        )
    names = pa.array(class_names, type=pa.string())
    return pa.chunked_array([names.take(chunk) for chunk in ids.chunks], type=pa.string())


def _label_values(uniques: pa.Array, *, what: str, name: str) -> list[Any]:
    """The distinct labels as Python values: ints or strings (integral floats become ints)."""
    kind = uniques.type
    if pa.types.is_floating(kind):
        floats = uniques.to_numpy(zero_copy_only=False)
        if not np.all(np.isfinite(floats) & (floats == np.round(floats))):
            example = next(v for v in floats.tolist() if not float(v).is_integer())
            raise ConfigError(
                f"{what}: column {name!r} holds non-integer numbers (e.g. {example}); "
                "classification labels are class names or integer ids: round or relabel them"
            )
        return [int(v) for v in floats.tolist()]
    if pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return uniques.to_pylist()
    if pa.types.is_boolean(kind):
        return [int(v) for v in uniques.to_pylist()]
    raise ConfigError(
        f"{what}: column {name!r} holds {kind} values; labels must be class names (text) or "
        "integer ids: set data.label_column to the label column"
    )


def _id_of(value: Any, names: tuple[str, ...]) -> int | None:
    """The id of a label value among ``names``: its name, else an integer id in range."""
    text = str(value)
    if text in names:
        return names.index(text)
    if isinstance(value, str):
        value = int(value) if value.isdigit() else None
    if isinstance(value, int) and 0 <= value < len(names):
        return value
    return None


def group_ids(column: pa.ChunkedArray, *, what: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Each row's group (client or owner id): ``(codes, names)`` with ``names[codes]`` the
    groups as a numpy str array ``(N,)``; ``names`` sorted, ``codes`` int64.

    Raises:
        ConfigError: a row without a group.
    """
    row = first_null_row(column)
    if row is not None:
        raise ConfigError(
            f"{what}: row {row} has no {name!r} (data.group_column); fill it in or drop the row"
        )
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())
    uniques = pc.unique(column)
    uniques = uniques.take(pc.array_sort_indices(uniques))
    codes = pc.index_in(column, value_set=uniques).to_numpy(zero_copy_only=False)
    return codes.astype(np.int64), np.asarray(uniques.to_pylist(), dtype=str)


def test_mask(column: pa.ChunkedArray, *, what: str, name: str) -> np.ndarray:
    """Bool array ``(N,)``: which rows the split column marks ``test`` (the others ``train``).

    Raises:
        ConfigError: a value other than ``train`` or ``test``, or a missing one.
    """
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())
    values = set(pc.unique(column).to_pylist())
    bad = sorted(str(v) for v in values - {"train", "test"})
    if bad:
        raise ConfigError(
            f"{what}: data.split_column = {name!r} holds {bad[:_SHOWN]}; every row must say "
            "'train' or 'test': rename those values, or set data.split_column = '' for a "
            "seeded 20% test set"
        )
    return pc.equal(column, "test").to_numpy(zero_copy_only=False).astype(bool)


# ---------------------------------------------------------------- instruction conversations

_ROLES = ("system", "user", "assistant")


def conversations(
    column: pa.ChunkedArray, *, what: str, name: str
) -> list[tuple[dict[str, str], ...]]:
    """Each row's conversation from a messages column: a list of ``{role, content}``
    objects (a JSON Lines / Parquet list, or a JSON string per cell, as a CSV holds it).

    The conversations are Python objects in memory (about a kilobyte a row), not Arrow.

    Raises:
        ConfigError: see :func:`check_conversation`, or a cell that is not such a list.
    """
    out = []
    for row, cell in enumerate(column.to_pylist(), start=1):
        if isinstance(cell, str):
            try:
                cell = json.loads(cell)
            except ValueError as err:
                raise ConfigError(
                    f"{what}: row {row}, column {name!r} (data.messages_column) is text but "
                    f"not JSON ({err}); write a list of {{role, content}} objects"
                ) from None
        out.append(check_conversation(cell, row=row, what=what, where=f"column {name!r}"))
    return out


def prompt_response(
    prompts: pa.ChunkedArray,
    responses: pa.ChunkedArray,
    *,
    what: str,
    names: tuple[str, str],
) -> list[tuple[dict[str, str], ...]]:
    """Each row's prompt and response as a two-message conversation (user, assistant).

    Raises:
        ConfigError: a prompt or response that is not text or is missing, or an empty one.
    """
    keys = ("prompt_column", "response_column")
    for column, key, name in zip((prompts, responses), keys, names, strict=True):
        check_text(column, key=key, name=name, what=what)
    out = []
    where = f"columns {names[0]!r} and {names[1]!r}"
    pairs = zip(prompts.to_pylist(), responses.to_pylist(), strict=True)
    for row, (p, r) in enumerate(pairs, start=1):
        messages = [{"role": "user", "content": p}, {"role": "assistant", "content": r}]
        out.append(check_conversation(messages, row=row, what=what, where=where))
    return out


def preference_pairs(
    prompts: pa.ChunkedArray,
    chosen: pa.ChunkedArray,
    rejected: pa.ChunkedArray,
    *,
    what: str,
    names: tuple[str, str, str],
) -> list[PreferencePair]:
    """Each row's prompt, chosen and rejected response as a :class:`PreferencePair`.

    A prompt is text (one user message) or a list of ``{role, content}`` messages ending
    with the user's (a JSON Lines / Parquet list, or its JSON text, as a CSV holds it).

    Raises:
        ConfigError: naming the row and the column: a missing or empty response, a response
            that is not text, or a prompt that is neither text nor such a list.
    """
    for column, key, name in zip(
        (chosen, rejected), ("chosen_column", "rejected_column"), names[1:], strict=True
    ):
        check_text(column, key=key, name=name, what=what)
    row = first_null_row(prompts)
    if row is not None:
        raise ConfigError(
            f"{what}: row {row} has no {names[0]!r} (data.prompt_column); fill it in or drop "
            "the row"
        )
    out = []
    cells = zip(prompts.to_pylist(), chosen.to_pylist(), rejected.to_pylist(), strict=True)
    for row, (prompt, good, bad) in enumerate(cells, start=1):
        for text, name, key in ((good, names[1], "chosen"), (bad, names[2], "rejected")):
            if not text.strip():
                raise ConfigError(
                    f"{what}: row {row}, column {name!r} (data.{key}_column): the {key} "
                    "response is empty; fill it in or drop the row"
                )
        messages = _prompt_messages(prompt, row=row, what=what, name=names[0])
        out.append(PreferencePair(messages, good, bad))
    return out


def _prompt_messages(cell: Any, *, row: int, what: str, name: str) -> Conversation:
    """A preference prompt cell as a conversation ending with the user's message."""
    where = f"column {name!r} (data.prompt_column)"
    if isinstance(cell, str) and cell.lstrip().startswith("["):
        with contextlib.suppress(ValueError):  # else text that happens to start with "["
            cell = json.loads(cell)
    if isinstance(cell, str):
        if not cell.strip():
            raise ConfigError(
                f"{what}: row {row}, {where}: the prompt is empty; fill it in or drop the row"
            )
        cell = [{"role": "user", "content": cell}]
    return check_conversation(cell, row=row, what=what, where=where, ends_with="user")


def check_conversation(
    messages: Any, *, row: int, what: str, where: str, ends_with: str = "assistant"
) -> tuple[dict[str, str], ...]:
    """``messages`` as a conversation, checked: a list of ``{role, content}`` with known
    roles, a user message first (after an optional system message), the last message the
    ``ends_with``'s (an instruction example's response: the assistant's; a preference
    prompt: the user's), and no empty message.

    Raises:
        ConfigError: naming the file, the row (1-based), the column and the fix.
    """
    at = f"{what}: row {row}, {where}"
    if not isinstance(messages, list) or not messages:
        raise ConfigError(
            f"{at}: holds {type(messages).__name__} {str(messages)[:60]!r}, not a list of "
            "{role, content} messages; write the conversation as such a list"
        )
    out = []
    for i, message in enumerate(messages, start=1):
        role = message.get("role") if isinstance(message, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if role not in _ROLES:
            raise ConfigError(
                f"{at}: message {i} has role {role!r}, not one of {list(_ROLES)}; fix it"
            )
        if not isinstance(content, str) or not content.strip():
            part = "response" if i == len(messages) and role == "assistant" else f"message {i}"
            raise ConfigError(f"{at}: the {part} ({role}) is empty; fill it in or drop the row")
        out.append({"role": role, "content": content})
    roles = [m["role"] for m in out]
    if roles[-1] != ends_with:
        example = (
            "an instruction example ends with the assistant's response"
            if ends_with == "assistant"
            else "a preference prompt ends with the user's message (the responses follow it)"
        )
        raise ConfigError(
            f"{at}: the last message is the {roles[-1]}'s, but {example}; end it with one or "
            "drop the row"
        )
    first = next((r for r in roles if r != "system"), None)
    if first != "user":
        raise ConfigError(
            f"{at}: the conversation starts with the {first}'s message, not the user's (after "
            "an optional system message); start it with the user's or drop the row"
        )
    return tuple(out)
