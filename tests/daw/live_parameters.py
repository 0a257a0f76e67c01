"""What Live makes of a Max for Live object's parameter attributes (`saved_attribute_attributes.valueof`).

Sources: Cycling '74, Max for Live reference, "Parameter Properties" (cycling74.com/docs/max5/refpages/m4l-ref/
parameters.html and the live.* object references since): the types are Float (0), Int (1), Enum (2) and Blob
(3); "the native integer representation is limited to a range of 0-255 … When working with Live UI objects
whose integer values are likely to be outside of the 0-255 range, the Type attribute should be set to Float,
and the Unit Style attribute should be set to Int"; Parameter Visibility (`parameter_invisible`) is 0
Automated and Stored, 1 Stored Only, 2 Hidden — only an automated one can be automated or MIDI/key mapped in
Live; unit styles 0 Int … 10 Native. A declaration Live would not honour is refused here with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

FLOAT, INT, ENUM, BLOB = 0, 1, 2, 3
AUTOMATED, STORED_ONLY, HIDDEN = 0, 1, 2
INT_RANGE = (0, 255)
UNIT_STYLES = range(0, 11)
UNIT_INT = 0


class ParameterError(ValueError):
    pass


@dataclass(frozen=True)
class LiveParameter:
    name: str
    type: int
    minimum: float
    maximum: float
    unit_style: int
    visibility: int
    enum: tuple[str, ...]

    @classmethod
    def from_box(cls, box: dict[str, Any]) -> LiveParameter:
        spec = box.get("saved_attribute_attributes", {}).get("valueof", {})
        name = str(spec.get("parameter_longname") or box.get("varname") or box["id"])
        kind = int(spec.get("parameter_type", FLOAT))
        if kind not in (FLOAT, INT, ENUM, BLOB):
            raise ParameterError(f"{name}: parameter_type {kind} is not Float, Int, Enum or Blob")
        enum = tuple(str(v) for v in spec.get("parameter_enum", ()))
        if kind == ENUM:
            if not enum:
                raise ParameterError(f"{name}: an Enum parameter needs parameter_enum")
            low, high = 0.0, float(len(enum) - 1)
        else:
            low = float(spec.get("parameter_mmin", 0.0))
            high = float(spec.get("parameter_mmax", 127.0 if kind == FLOAT else 127))
        if kind == INT and not (INT_RANGE[0] <= low <= high <= INT_RANGE[1]):
            raise ParameterError(f"{name}: Live holds Int parameters in 0–255, not {low:g}–{high:g}: use Float with "
                                 "unit style Int")
        if low > high:
            raise ParameterError(f"{name}: its range {low:g}–{high:g} is empty")
        unit = int(spec.get("parameter_unitstyle", UNIT_INT if kind == INT else 1))
        if unit not in UNIT_STYLES:
            raise ParameterError(f"{name}: parameter_unitstyle {unit} is not one of Live's unit styles")
        visibility = int(spec.get("parameter_invisible", AUTOMATED))
        if visibility not in (AUTOMATED, STORED_ONLY, HIDDEN):
            raise ParameterError(f"{name}: parameter_invisible {visibility} is not 0, 1 or 2")
        parameter = cls(name, kind, low, high, unit, visibility, enum)
        for initial in spec.get("parameter_initial", ()) if spec.get("parameter_initial_enable") else ():
            if parameter.hold(float(initial)) != float(initial):
                raise ParameterError(f"{name}: its initial value {initial} does not fit its range {low:g}–{high:g}")
        return parameter

    def hold(self, value: float) -> float:
        """The value Live keeps: clipped to the range; whole numbers for Int, and for Float shown as Int."""
        clipped = min(max(value, self.minimum), self.maximum)
        return float(round(clipped)) if self.type in (INT, ENUM) or self.unit_style == UNIT_INT else clipped

    @property
    def automatable(self) -> bool:
        """Live offers automation and MIDI/key mapping only for "Automated and Stored" parameters."""
        return self.visibility == AUTOMATED


def live_parameters(patcher: dict[str, Any]) -> dict[str, LiveParameter]:
    """Every parameter-enabled box of a patcher, as Live would take it (raises on one Live would not)."""
    found = {}
    for entry in patcher["boxes"]:
        box = entry["box"]
        if box.get("parameter_enable") and str(box.get("maxclass", "")).startswith("live."):
            found[box["id"]] = LiveParameter.from_box(box)
    return found
