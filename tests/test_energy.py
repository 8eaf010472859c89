"""Energy per repeat (bench/measure/energy.py) on fakes: a powercap tree in tmp_path (wrap-around included) and a
fake NVML module; and the columns a real CPU cell writes, whatever this machine can read."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from bench.cell import Cell, run_cell
from bench.measure.energy import EnergyMeter, energy_columns, package_zones

MAX_UJ = 262_143_328_850  # a real package's max_energy_range_uj


def zone(root: Path, name: str, label: str, energy_uj: int, max_uj: int = MAX_UJ) -> Path:
    z = root / name
    z.mkdir(parents=True)
    (z / "name").write_text(label + "\n")
    (z / "energy_uj").write_text(f"{energy_uj}\n")
    (z / "max_energy_range_uj").write_text(f"{max_uj}\n")
    return z


def set_uj(z: Path, value: int) -> None:
    (z / "energy_uj").write_text(f"{value}\n")


def test_rapl_sums_packages_only(tmp_path):
    pkg0 = zone(tmp_path, "intel-rapl:0", "package-0", 1_000_000)
    pkg1 = zone(tmp_path, "intel-rapl:1", "package-1", 5_000_000)
    core = zone(tmp_path, "intel-rapl:0:0", "core", 100)  # inside package-0: counting it would count twice
    psys = zone(tmp_path, "intel-rapl:2", "psys", 100)  # the whole platform, packages included
    assert package_zones(tmp_path) == [pkg0, pkg1]
    meter = EnergyMeter("cpu", powercap=tmp_path)
    assert meter.source == "rapl" and "intel-rapl:0, intel-rapl:1" in meter.note
    meter.start()
    set_uj(pkg0, 3_500_000)
    set_uj(pkg1, 6_000_000)
    set_uj(core, 99_000_000)
    set_uj(psys, 99_000_000)
    assert meter.stop() == pytest.approx(2.5 + 1.0)


def test_rapl_wrap_around_adds_the_range_back(tmp_path):
    pkg0 = zone(tmp_path, "intel-rapl:0", "package-0", MAX_UJ - 400_000)
    pkg1 = zone(tmp_path, "intel-rapl:1", "package-1", 10, max_uj=1_000_000)  # zones wrap each on its own
    meter = EnergyMeter("cpu", powercap=tmp_path)
    meter.start()
    set_uj(pkg0, 600_000)  # wrapped: 400_000 µJ up to the range, 600_000 after it
    set_uj(pkg1, 2_010)
    assert meter.stop() == pytest.approx(1.0 + 0.002)
    meter.start()  # and a repeat after the wrap differences normally
    set_uj(pkg0, 1_600_000)
    assert meter.stop() == pytest.approx(1.0)


def test_no_powercap_or_unreadable_counters_give_no_number(tmp_path):
    meter = EnergyMeter("cpu", powercap=tmp_path / "absent")
    assert meter.source == "none" and "not present" in meter.note
    meter.start()
    assert meter.stop() is None
    z = zone(tmp_path / "locked", "intel-rapl:0", "package-0", 0)
    (z / "energy_uj").unlink()
    (z / "energy_uj").mkdir()  # reading it fails as a root-only file fails for a user (we may be root here)
    meter = EnergyMeter("cpu", powercap=tmp_path / "locked")
    assert meter.source == "none" and "not readable" in meter.note
    assert EnergyMeter("cpu", powercap=tmp_path).source == "none"  # a tree with no package zone


def test_a_counter_lost_mid_run_gives_that_repeat_no_figure(tmp_path):
    z = zone(tmp_path, "intel-rapl:0", "package-0", 0)
    meter = EnergyMeter("cpu", powercap=tmp_path)
    meter.start()
    (z / "energy_uj").write_text("garbage")
    assert meter.stop() is None and "read failed" in meter.note


class FakeNvml:
    """The pynvml calls EnergyMeter makes, reading successive counter values (millijoules)."""

    class NVMLError(Exception):
        pass

    def __init__(self, readings: list[int] | None = None, supported: bool = True):
        self.readings, self.supported, self.index = list(readings or []), supported, None

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        self.index = index
        return f"gpu{index}"

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        if not self.supported:
            raise self.NVMLError("Not Supported")
        return self.readings.pop(0)


def test_nvml_counter_in_millijoules(monkeypatch):
    fake = FakeNvml([10_000, 50_000_000, 50_012_345])  # the first read only proves the counter exists
    meter = EnergyMeter("cuda:1", nvml=fake)
    assert fake.index == 1 and meter.source == "nvml" and "cuda:1" in meter.note
    meter.start()
    assert meter.stop() == pytest.approx(12.345)
    import pynvml  # and the real module is the default

    monkeypatch.setattr(pynvml, "nvmlInit", fake.nvmlInit)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByIndex", fake.nvmlDeviceGetHandleByIndex)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetTotalEnergyConsumption", FakeNvml([0, 1000, 3000])
                        .nvmlDeviceGetTotalEnergyConsumption)
    meter = EnergyMeter("cuda:0")
    meter.start()
    assert meter.source == "nvml" and meter.stop() == pytest.approx(2.0)


def test_an_nvml_counter_going_backwards_gives_no_figure():
    meter = EnergyMeter("cuda:0", nvml=FakeNvml([5_000, 5_000, 1_000]))
    meter.start()
    assert meter.stop() is None and "backwards" in meter.note


def test_nvml_without_the_counter_says_why():
    meter = EnergyMeter("cuda:0", nvml=FakeNvml(supported=False))
    assert meter.source == "none" and "Not Supported" in meter.note
    meter.start()
    assert meter.stop() is None


def test_energy_columns_are_medians_or_a_reason():
    meter = EnergyMeter("cuda:0", nvml=FakeNvml([0]))
    row, values = energy_columns(meter, [3.0, None, 1.0, 2.0], [30, 30, 20, 10])
    assert row["energy_source"] == "nvml" and row["energy_j"] == 2.0
    assert values["joules_per_token"] == [0.1, 0.05, 0.2] and row["joules_per_token"] == 0.1
    none = EnergyMeter("cpu", powercap="/nonexistent")
    row, values = energy_columns(none, [None, None], [5, 5])
    assert row == {"energy_source": "none", "energy_note": "no RAPL counters: /nonexistent not present"}
    assert values == {}


@pytest.mark.parametrize("workload,strategy", [("smoke", "full"), ("mixed-chat", "continuous")])
def test_a_cpu_cell_row_carries_energy_or_why_not(tmp_path, workload, strategy):
    """This machine's real counters, on the prompt and the serving path: a number where RAPL is readable, else
    source "none", a note and no number."""
    cell = Cell(model="random:tiny-llama", workload=workload, strategy=strategy, repeats=2, quality=False,
                out_dir=str(tmp_path), num_requests=2)
    record = run_cell(cell)
    row = record["row"]
    meter = EnergyMeter("cpu")
    assert row["energy_source"] == meter.source
    if meter.source == "none":
        assert "energy_j" not in row and "joules_per_token" not in row and row["energy_note"] == meter.note
    else:
        assert row["energy_j"] >= 0 and math.isfinite(row["joules_per_token"])
        assert record["spread"]["energy_j"]["n"] == 2


def test_the_report_shows_energy_or_why_not():
    from bench.results.report import device_block

    measured = [{"strategy": "full", "params": "", "energy_j": 12.5, "joules_per_token": 0.25,
                 "energy_source": "nvml", "energy_note": "NVML total energy of cuda", "cuda_peak_allocated_mb": 300.0}]
    text = "\n".join(device_block(measured))
    assert "NVML total energy of cuda" in text and "| full | – | 300 |" in text and "| 12.5 | 0.25 | nvml |" in text
    unmeasured = [{"strategy": s, "energy_source": "none", "energy_note": "no RAPL counters: x not present"}
                  for s in ("naive", "full")]
    assert device_block(unmeasured) == ["Energy not measured: no RAPL counters: x not present.", ""]
