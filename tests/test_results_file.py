"""results.json / results.jsonl are strict JSON (non-finite numbers as strings), read back as floats, old files
still load; the environment and every row record what explains a difference between two runs."""

from __future__ import annotations

import json
import math
import os

import torch

from bench import env
from bench.cell import Cell
from bench.results.metrics import CONFIG
from bench.results.rows import (
    COLUMNS,
    SCHEMA_VERSION,
    append_jsonl,
    dumps,
    load_results,
    read_jsonl,
    row_key,
    to_csv,
    write_run,
)

NEW_ROW_COLUMNS = ["kvbench_version", "python_version", "cpu", "cpu_capability"]


def strict(text: str):
    """json.loads that refuses the bare Infinity/-Infinity/NaN tokens, as JSON.parse and jq do."""
    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


def serving_record(**row) -> dict:
    base = {"model": "m", "workload": "mixed-chat", "strategy": "full", "params": "", "status": "ok", "error": "",
            "request_rate": math.inf, "ttft_p99_ms": math.nan, "tokens_per_s": 12.5, "first_divergence": -1}
    return {"row": {**base, **row},
            "spread": {"tokens_per_s": {"values": [12.0, 13.0], "cv": math.nan, "max": math.inf}},
            "samples": {"ttft_ms": [1.0, math.inf, -math.inf]}}


def test_results_json_is_strict_and_reads_back_inf_and_nan(tmp_path):
    record = serving_record()
    environment = {"cpu": "AMD EPYC", "odd": math.inf, "tensor": torch.tensor(math.inf)}
    write_run(tmp_path, [record], environment, {"command": "kvbench run", "slo_ms": [math.inf]})
    raw = strict((tmp_path / "results.json").read_text())
    assert list(raw)[:2] == ["schema_version", "kvbench_version"]
    assert raw["schema_version"] == SCHEMA_VERSION == 2 and raw["kvbench_version"] == env.kvbench_version() != ""
    key = row_key(record["row"])
    assert raw["rows"][0]["request_rate"] == "inf" and raw["rows"][0]["ttft_p99_ms"] == "nan"
    assert raw["spread"][key]["tokens_per_s"]["max"] == "inf" and raw["samples"][key]["ttft_ms"] == [1.0, "inf", "-inf"]
    assert raw["environment"]["odd"] == raw["environment"]["tensor"] == "inf" and raw["meta"]["slo_ms"] == ["inf"]

    data = load_results(tmp_path)
    row = data["rows"][0]
    assert row["request_rate"] == math.inf and math.isnan(row["ttft_p99_ms"]) and row["tokens_per_s"] == 12.5
    tps = data["spread"][key]["tokens_per_s"]
    assert tps["max"] == math.inf and math.isnan(tps["cv"]) and tps["values"] == [12.0, 13.0]
    assert data["samples"][key]["ttft_ms"] == [1.0, math.inf, -math.inf]
    assert data["environment"]["odd"] == math.inf and data["environment"]["cpu"] == "AMD EPYC"


def test_text_columns_spelled_like_a_number_stay_text(tmp_path):
    write_run(tmp_path, [serving_record(strategy="nan", model="inf")], {}, {})
    row = load_results(tmp_path)["rows"][0]
    assert (row["strategy"], row["model"]) == ("nan", "inf")


def test_old_files_with_bare_infinity_and_no_schema_version_still_load(tmp_path):
    old = ('{"environment": {"cpu": "AMD EPYC"}, "meta": {}, "rows": [{"model": "m", "workload": "w", '
           '"strategy": "full", "params": "", "status": "ok", "request_rate": Infinity, "ppl": NaN}], "spread": {}}')
    (tmp_path / "results.json").write_text(old)
    data = load_results(tmp_path)
    assert data["schema_version"] == 1 and data["rows"][0]["request_rate"] == math.inf
    assert math.isnan(data["rows"][0]["ppl"])
    (tmp_path / "results.jsonl").write_text('{"row": {"model": "m", "workload": "w", "strategy": "full", '
                                            '"params": "", "request_rate": -Infinity}}\n')
    records, warning = read_jsonl(tmp_path / "results.jsonl")
    assert warning is None and records[0]["row"]["request_rate"] == -math.inf


def test_jsonl_round_trips_inf_as_strict_json(tmp_path):
    path = tmp_path / "results.jsonl"
    append_jsonl(path, serving_record())
    append_jsonl(path, serving_record(params="rate=2", request_rate=2.0))
    lines = path.read_text().splitlines()
    assert [strict(line)["row"]["request_rate"] for line in lines] == ["inf", 2.0]
    records, warning = read_jsonl(path)
    assert warning is None and [r["row"]["request_rate"] for r in records] == [math.inf, 2.0]
    assert records[0]["samples"]["ttft_ms"] == [1.0, math.inf, -math.inf]


def test_dumps_refuses_nothing_it_can_encode_and_csv_writes_inf():
    assert strict(dumps({"a": [math.nan, {"b": -math.inf}], "c": (1, 2.5)})) == {"a": ["nan", {"b": "-inf"}],
                                                                               "c": [1, 2.5]}
    csv_text = to_csv([serving_record()["row"]])
    header, line = csv_text.splitlines()
    values = dict(zip(header.split(","), line.split(","), strict=True))
    assert values["request_rate"] == "inf" and values["ttft_p99_ms"] == ""


def test_environment_records_what_explains_a_difference(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    e = env.environment()
    assert isinstance(e["kvbench_version"], str) and e["kvbench_version"]
    assert e["python"].count(".") == 2 and e["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert 1 <= e["affinity_cores"] <= e["cores"] and e["affinity_cores"] == len(os.sched_getaffinity(0))
    assert isinstance(e["physical_cores"], int) and 0 <= e["physical_cores"] <= e["cores"]
    assert isinstance(e["memory_gib"], float) and e["memory_gib"] > 0
    assert e["torch_threads"] == torch.get_num_threads() >= 1
    assert e["thread_env"].get("OMP_NUM_THREADS") == "3" and "MKL_NUM_THREADS" not in e["thread_env"]
    json.dumps(e, allow_nan=False)  # plain JSON types only


def test_every_row_carries_versions_cpu_and_isa_as_configuration():
    row = Cell("m", "smoke", "full").base_row()
    assert [row[k] for k in NEW_ROW_COLUMNS] == [env.kvbench_version(), env.python_version(), env.cpu_model(),
                                                 env.cpu_capability()]
    at = COLUMNS.index("transformers_version") + 1
    assert COLUMNS[at: at + len(NEW_ROW_COLUMNS)] == NEW_ROW_COLUMNS
    assert set(NEW_ROW_COLUMNS) <= CONFIG  # compare treats them as what a cell is, never as a measurement

