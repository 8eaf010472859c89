"""Energy of a timed repeat, from the hardware's own counters: NVML's total-energy counter on a CUDA device, the
RAPL package counters under /sys/class/powercap on a CPU. Where neither can be read, no number is made up: the row
says ``energy_source = "none"`` and ``energy_note`` says why.

Both counters are device-wide: every process on that GPU or CPU package adds to them, as it adds to wall time.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

POWERCAP = Path("/sys/class/powercap")


class EnergyMeter:
    """Joules used between ``start()`` and ``stop()`` on ``device``: NVML for ``cuda[:N]``, RAPL otherwise.

    ``source`` is "nvml", "rapl" or "none"; ``note`` says what was read, or why nothing could be. ``nvml`` (the
    pynvml module) and ``powercap`` are parameters so tests can hand in fakes."""

    def __init__(self, device: str = "cpu", powercap: Path | str = POWERCAP, nvml: Any = None) -> None:
        self.source, self.note = "none", ""
        # Each counter in joules, and the value past which it wraps to 0 (inf: NVML's is 64-bit millijoules).
        self._read: Callable[[], list[float]] | None = None
        self._wrap_j: list[float] = []
        self._begin: list[float] | None = None
        if str(device).startswith("cuda"):
            self._open_nvml(str(device), nvml)
        else:
            self._open_rapl(Path(powercap))

    def _open_nvml(self, device: str, nvml: Any) -> None:
        try:
            if nvml is None:
                import pynvml as nvml
            nvml.nvmlInit()
            handle = nvml.nvmlDeviceGetHandleByIndex(_cuda_index(device))
            nvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises NotSupported on GPUs older than Volta
        except Exception as e:  # no library, no driver, or no counter: say so and measure nothing
            self.note = f"no NVML energy counter for {device}: {str(e)[:100] or type(e).__name__}"
            return
        self.source, self._wrap_j = "nvml", [math.inf]
        self.note = f"NVML total energy of {device} (the whole GPU, every process on it)"
        self._read = lambda: [nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3]

    def _open_rapl(self, root: Path) -> None:
        if not root.is_dir():
            self.note = f"no RAPL counters: {root} not present"
            return
        zones = package_zones(root)
        if not zones:
            self.note = f"no RAPL package zone (intel-rapl:N with a readable name) under {root}"
            return
        try:
            self._wrap_j = [_read_uj(z / "max_energy_range_uj") / 1e6 for z in zones]
            for z in zones:
                _read_uj(z / "energy_uj")
        except (OSError, ValueError) as e:  # energy_uj is readable by root only since Linux 5.10
            self.note = f"RAPL counters under {root} not readable: {e}"
            return
        self.source = "rapl"
        self.note = f"RAPL {', '.join(z.name for z in zones)} (whole CPU packages, every process on them)"
        self._read = lambda: [_read_uj(z / "energy_uj") / 1e6 for z in zones]

    def start(self) -> None:
        """Read the counters at the start of a timed repeat (after the clock's synchronize)."""
        self._begin = self._safe_read()

    def stop(self) -> float | None:
        """Joules since ``start()``; None when nothing could be read (``note`` says why)."""
        begin, self._begin = self._begin, None
        end = self._safe_read() if begin is not None else None
        if begin is None or end is None:
            return None
        # A RAPL counter that went down wrapped, once: its range is hundreds of kJ, minutes of a busy package, far
        # longer than a repeat. Each zone wraps on its own, so each is differenced on its own. NVML's never wraps:
        # going down means the driver was reloaded, and the repeat has no figure.
        if any(e < b and math.isinf(wrap) for b, e, wrap in zip(begin, end, self._wrap_j)):
            self.note = f"{self.source} counter went backwards (driver reloaded?)"
            return None
        return sum(e - b if e >= b else e - b + wrap for b, e, wrap in zip(begin, end, self._wrap_j))

    def _safe_read(self) -> list[float] | None:
        if self._read is None:
            return None
        try:
            return self._read()
        except Exception as e:  # a counter gone mid-run: this repeat has no figure, never a guess
            self.note = f"{self.source} counter read failed: {str(e)[:100]}"
            return None


def package_zones(root: Path) -> list[Path]:
    """The top-level RAPL zones (``intel-rapl:N``; AMD's kernel driver uses the same names) that are CPU packages.
    Sub-zones (``intel-rapl:N:M``: core, uncore, dram) lie inside their package, and ``psys`` covers the whole
    platform, packages included: adding either would count the same joules twice."""
    zones = []
    for zone in sorted(root.glob("intel-rapl:*")):
        if zone.name.count(":") != 1 or not (zone / "energy_uj").exists():
            continue
        try:
            name = (zone / "name").read_text().strip()
        except OSError:
            continue
        if name.startswith("package"):
            zones.append(zone)
    return zones


def _read_uj(path: Path) -> int:
    return int(path.read_text().strip())


def _cuda_index(device: str) -> int:
    _, _, index = device.partition(":")
    if index:
        return int(index)
    import torch  # a CUDA run only: the device torch made current

    return torch.cuda.current_device()


def energy_columns(meter: EnergyMeter, joules: list[float | None], tokens: list[int]
                   ) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """Row columns from each repeat's joules and produced tokens: ``energy_j`` and ``joules_per_token`` (medians
    over the repeats that have a figure), ``energy_source``, ``energy_note``; and the per-repeat values, for the
    spread. With no figure at all the row carries the source "none" and the reason, and no number."""
    pairs = [(j, n) for j, n in zip(joules, tokens) if j is not None]
    if not pairs:
        return {"energy_source": "none", "energy_note": meter.note or "no energy counter was read"}, {}
    values = {"energy_j": [j for j, _ in pairs], "joules_per_token": [j / n if n else math.nan for j, n in pairs]}
    row: dict[str, Any] = {"energy_source": meter.source, "energy_note": meter.note}
    row.update({k: statistics.median(v) for k, v in values.items()})
    return row, values
