"""Workloads one shapes or brings: random:in=..,out=..,n=.. has exact lengths; --prompts FILE.jsonl and ShareGPT files
become requests; a bad file is one line naming the line (or entry) and the problem."""

from __future__ import annotations

import json

import pytest

from bench.models import load_tokenizer, resolve
from bench.workloads.catalog import get_workload
from bench.workloads.specs import split_workloads
from bench.workloads.text import encode_prompt


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(resolve("random:tiny-llama"))


def test_random_workload_has_exact_lengths_and_a_shared_prefix(tokenizer):
    w = get_workload("random:in=24,out=5,n=3,prefix=8")
    built = w.build(tokenizer)
    assert [(len(p), n) for p, n in built] == [(32, 5)] * 3
    assert built[0][0][:8] == built[1][0][:8] == built[2][0][:8]  # the shared prefix
    assert len({tuple(p[8:]) for p, _ in built}) == 3  # each request its own tokens
    assert w.is_request_workload and w.max_new_tokens == 5
    assert [r.arrival_s for r in w.requests(tokenizer)] == [0.0] * 3
    assert get_workload("random:in=24,out=5,n=3").build(tokenizer) == get_workload("random:in=24,out=5,n=3").build(
        tokenizer)  # the same requests every run


def test_a_comma_list_keeps_a_random_spec_whole():
    assert split_workloads("smoke, random:in=8,out=4,n=2,prefix=2,mixed-chat") == [
        "smoke", "random:in=8,out=4,n=2,prefix=2", "mixed-chat"]


def test_prompts_file_lines_become_requests(tmp_path, tokenizer):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"prompt": "Say hi.", "max_tokens": 3}) + "\n\n" + json.dumps(
        {"messages": [{"role": "user", "content": "Name a color."}], "max_tokens": 7}) + "\n")
    w = get_workload(f"prompts:{path}")
    built = w.build(tokenizer)
    assert [n for _, n in built] == [3, 7] and w.num_requests == 2 and w.max_new_tokens == 7
    assert built[0][0] == encode_prompt(tokenizer, "Say hi.")  # the model's chat template, as every workload
    assert built[1][0] == list(tokenizer.apply_chat_template([{"role": "user", "content": "Name a color."}],
                                                             add_generation_prompt=True, tokenize=True,
                                                             return_dict=False))


@pytest.mark.parametrize("lines, message", [
    (['{"prompt": "a", "max_tokens": 2}', '{"prompt": "b"'], ":2: not JSON"),
    (['{"prompt": "a", "max_tokens": 0}'], ":1: 'max_tokens' must be a whole number >= 1, got 0"),
    (['{"prompt": "a"}'], ":1: 'max_tokens' must be a whole number >= 1, got null"),
    (['{"max_tokens": 2}'], ":1: needs exactly one of 'prompt' (a string) or 'messages'"),
    (['{"prompt": "a", "max_tokens": 2}', '', '{"messages": [{"role": "user"}], "max_tokens": 2}'],
     ":3: every message needs a string 'role' and 'content'"),
    (['[1, 2]'], ":1: expected an object"),
    ([''], "no requests"),
])
def test_a_bad_prompts_file_is_one_line_naming_the_line(tmp_path, lines, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as e:
        get_workload(f"prompts:{path}")
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_sharegpt_takes_first_turns_and_the_replys_length(tmp_path, tokenizer):
    data = [{"id": "a", "conversations": [{"from": "human", "value": "Hello there, how are you?"},
                                          {"from": "gpt", "value": "Fine, thanks for asking."}]},
            {"id": "b", "conversations": [{"from": "human", "value": "only a question"}]},  # skipped, as vLLM does
            {"id": "c", "conversations": [{"from": "human", "value": "Why?"}, {"from": "gpt", "value": "Because."},
                                          {"from": "human", "value": "ignored"}]}]
    path = tmp_path / "sharegpt.json"
    path.write_text(json.dumps(data))
    w = get_workload(f"sharegpt:{path}")
    built = w.build(tokenizer)
    reply = len(tokenizer("Fine, thanks for asking.", add_special_tokens=False).input_ids)
    assert w.num_requests == 2 and built[0] == (encode_prompt(tokenizer, "Hello there, how are you?"), reply)
    assert get_workload(f"sharegpt:{path},n=1").num_requests == 1


@pytest.mark.parametrize("text, message", [
    ('[{"conversations": [{"from": "human"}]}]', "entry 0: needs 'conversations'"),
    ('{"conversations": []}', "expected a JSON list"),
    ('[\n{"conversations": ]', ":2: not JSON"),
])
def test_a_bad_sharegpt_file_is_one_line(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        get_workload(f"sharegpt:{path}")
    assert "\n" not in str(e.value)


def test_the_cli_names_a_bad_prompts_line_before_any_cell(tmp_path, capsys):
    from bench.cli import main

    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "max_tokens": 2}\n{"prompt": 3, "max_tokens": 2}\n')
    code = main(["run", "--model", "random:tiny-llama", "--prompts", str(path), "--strategies", "full", "--out",
                 str(tmp_path / "x")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"{path}:2: 'prompt' must be a non-empty string" in err[0]
