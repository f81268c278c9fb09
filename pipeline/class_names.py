"""Class names as the project keeps them, wherever they enter (image folders, anomaly
folders, HDF5 imports): Unicode-normalised (NFC), two spellings of one name refused. Below the
store and extraction alike."""

from __future__ import annotations

import unicodedata


def nfc(name: str) -> str:
    """A class name as the project keeps it: Unicode-normalised (NFC). macOS writes folder names
    decomposed (NFD), other systems mostly composed: the same name either way."""
    return unicodedata.normalize("NFC", name)


def _code_points(name: str) -> str:
    return " ".join(f"U+{ord(c):04X}" for c in name)


def same_after_nfc_problem(names: list[str]) -> str | None:
    """Why ``names`` (as given, before normalisation) cannot all be class names: two different
    spellings that are one name after Unicode normalisation (NFC); or None."""
    seen: dict[str, str] = {}
    for name in names:
        key = nfc(name)
        if key in seen and seen[key] != name:
            return (f"names {seen[key]!r} ({_code_points(seen[key])}) and {name!r} ({_code_points(name)}), which are "
                    f"one name after Unicode normalisation (NFC): the two classes would share their metrics, plots "
                    f"and saved heads")
        seen.setdefault(key, name)
    return None
