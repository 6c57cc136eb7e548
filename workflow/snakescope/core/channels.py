"""Which channels of a unit the model sees (config key ``model.channels``, names or indices), shared by every stage."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

def select_channels(array: np.ndarray, names: list[str], wanted: tuple[str | int, ...]) -> np.ndarray:
    return array[channel_indices(names, wanted, array.shape[0])]


def model_channels(array: np.ndarray, unit: dict[str, Any], wanted: tuple[str | int, ...]) -> np.ndarray:
    """What the model and the segmentation look at: the ``model.channels`` of a unit's CYX ``array``, each with the
    smooth background fitted at import taken out (:mod:`.background`; as they are when none was fitted)."""
    from .background import flattened_channels

    return flattened_channels(array, unit, channel_indices(unit["channel_names"], wanted, array.shape[0]))


# channel names that say "nuclear stain" (case-insensitive, whole words or name parts)
NUCLEAR_STAIN = re.compile(r"(?<![a-z])(dapi|hoechst|h33342|h33258|draq[57]|nucblue|nucred|nucspot|sir-?dna|sytox|to-?pro|"
                           r"propidium|h2b|dna|nuclei|nucleus|nuclear)(?![a-z])", re.IGNORECASE)


def channel_choice_warning(names: list[str], wanted: tuple[str | int, ...]) -> str | None:
    """A warning when ``model.channels`` picks channels by index, none of them is named like a nuclear stain, and
    another channel is (DAPI at index 2 while the model sees index 0): the nuclei model would segment another
    stain without a word. Channels picked by name are the user's explicit choice: no warning."""
    if any(isinstance(w, str) for w in wanted):
        return None
    chosen = [w for w in wanted if isinstance(w, int) and 0 <= w < len(names)]
    if not chosen or any(NUCLEAR_STAIN.search(names[i]) for i in chosen):
        return None
    stains = [i for i, name in enumerate(names) if i not in chosen and NUCLEAR_STAIN.search(name)]
    if not stains:
        return None
    return (f"config key model.channels picks {', '.join(repr(names[i]) for i in chosen)} (index {', '.join(map(str, chosen))}), "
            f"while {names[stains[0]]!r} (index {stains[0]}) is named like a nuclear stain: if the model segments nuclei, "
            f"set model.channels: [{names[stains[0]]!r}]")


def check_model_channels(array: np.ndarray, names: list[str], wanted: tuple[str | int, ...]) -> None:
    """Raise when every channel ``model.channels`` selects is blank (one value in every pixel) while another channel
    of the unit varies: the model would see nothing and the review would call a field of nuclei empty. A unit
    blank in every channel is an empty field and passes."""
    chosen = channel_indices(names, wanted, array.shape[0])
    blank = [bool(array[i].min() == array[i].max()) for i in range(array.shape[0])]
    if not all(blank[i] for i in chosen) or all(blank):
        return
    signal = [i for i in range(array.shape[0]) if not blank[i]]
    raise ValueError(
        f"config key model.channels selects {', '.join(repr(names[i]) for i in chosen)}, blank in this image (every pixel "
        f"{array[chosen[0]].flat[0]}), while {', '.join(repr(names[i]) for i in signal)} {'carry' if len(signal) > 1 else 'carries'} signal: set model.channels "
        f"to the stain the model segments, e.g. [{signal[0]}] or [{names[signal[0]]!r}]")


def channel_indices(names: list[str], wanted: tuple[str | int, ...], n_channels: int) -> list[int]:
    """The indices of ``model.channels`` (names or indices) in a unit of ``n_channels`` channels named ``names``."""
    index = []
    for w in wanted:
        if isinstance(w, int):
            if not 0 <= w < n_channels:
                raise IndexError(f"config key model.channels: channel index {w} but the unit has {n_channels} channel(s)")
            index.append(w)
        elif w in names:
            index.append(names.index(w))
        else:
            raise KeyError(f"config key model.channels: channel {w!r} not among {names}")
    return index


def model_channel_name(unit: dict[str, Any], channels: tuple[str | int, ...]) -> str:
    first = channels[0] if channels else 0
    return unit["channel_names"][first] if isinstance(first, int) else str(first)
