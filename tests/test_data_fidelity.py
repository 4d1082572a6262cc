"""Issue 13 item 8: datasets are read as written — text stays text, pandas 3 pickles load safely."""

from __future__ import annotations

import json
import os
import pickle
import pickletools

import numpy as np
import pandas as pd
import pytest

from shared_core.data import load_dataset

#: Prompts pandas' default NA parsing used to turn into "" and ids its dtype inference mangled.
TRICKY_PROMPTS = ["NA", "None", "null", "N/A", "nan", "What is 2 + 2?"]
TRICKY_IDS = ["007", "008", "0x1F", "1e3", "NA", "010"]


def _rows():
    return [
        {"sample_id": sid, "prompt": p, "task": "NA" if i == 0 else "arith",
         "model-a": [1.0, 0.0, 0.5, 1.0, 0.0, 1.0][i], "model-b": [0.0, None, 1.0, 0.25, 1.0, 0.0][i]}
        for i, (sid, p) in enumerate(zip(TRICKY_IDS, TRICKY_PROMPTS, strict=False))
    ]


def _check(data):
    assert data.prompts == TRICKY_PROMPTS
    assert list(data.sample_ids) == TRICKY_IDS
    assert list(data.task) == ["NA"] + ["arith"] * 5
    assert data.models == ["model-a", "model-b"]
    assert data.quality.dtype == np.float64
    np.testing.assert_array_equal(data.quality[:, 0], [1.0, 0.0, 0.5, 1.0, 0.0, 1.0])
    np.testing.assert_array_equal(data.quality[:, 1], [0.0, np.nan, 1.0, 0.25, 1.0, 0.0])


def test_csv_keeps_na_like_prompts_and_leading_zero_ids(tmp_path):
    path = tmp_path / "d.csv"
    lines = ["sample_id,prompt,task,model-a,model-b"]
    for r in _rows():
        b = "" if r["model-b"] is None else repr(r["model-b"])
        lines.append(f"{r['sample_id']},{r['prompt']},{r['task']},{r['model-a']!r},{b}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    # The file really holds the strings (the empty quality cell is the only missing value).
    assert "\n007,NA,NA,1.0,0.0\n" in path.read_text() and "\n008,None,arith,0.0,\n" in path.read_text()
    _check(load_dataset(path))


def test_csv_with_byte_order_mark_and_nan_written_by_numpy(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_text("prompt,m1,m2\nNA,1,nan\nnull,0,0.5\n", encoding="utf-8-sig")
    data = load_dataset(path)
    assert data.prompts == ["NA", "null"] and data.models == ["m1", "m2"]
    np.testing.assert_array_equal(data.quality, [[1.0, np.nan], [0.0, 0.5]])


def test_csv_text_columns_outside_the_models_stay_text(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("prompt,note,m1\nhi,NA,1\nyo,None,0\n", encoding="utf-8")
    data = load_dataset(path)
    assert data.models == ["m1"]  # "note" is text, not a model with two missing labels


def test_csv_wide_layout_costs_are_numbers_and_responses_text(tmp_path):
    path = tmp_path / "wide.csv"
    path.write_text(
        "sample_id,prompt,m1,m1|total_cost,m1|model_response\n"
        "007,NA,1,0.002,None\n"
        "008,None,,,007\n",
        encoding="utf-8",
    )
    data = load_dataset(path, prices={"m1": [1, 2]})
    assert list(data.sample_ids) == ["007", "008"] and data.prompts == ["NA", "None"]
    np.testing.assert_array_equal(data.quality, [[1.0], [np.nan]])
    np.testing.assert_array_equal(data.cost, [[0.002], [np.nan]])
    assert data.responses == [["None"], ["007"]]


def test_jsonl_keeps_na_like_prompts_and_leading_zero_ids(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in _rows()), encoding="utf-8")
    assert '"sample_id": "007", "prompt": "NA"' in path.read_text()
    _check(load_dataset(path))


def test_jsonl_dataset_with_line_separator_inside_a_prompt(tmp_path):
    path = tmp_path / "d.jsonl"
    rows = [{"prompt": "first\u2028second\u2029third", "m1": 1}, {"prompt": "2024-01-01", "m1": 0}]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert "\u2028" in path.read_text(encoding="utf-8")
    data = load_dataset(path)
    assert data.prompts == ["first\u2028second\u2029third", "2024-01-01"]


# --- pickles --------------------------------------------------------------------------------


def _pandas3_frame():
    frame = pd.DataFrame({
        "sample_id": ["007", "008", "009"],
        "prompt": ["NA", "None", "Explain U+2028: \u2028 done"],
        "m1": [1.0, np.nan, 0.0],
        "m2": [0, 1, 1],
    })
    # The installed pandas stores these as Arrow-backed strings; the test is about that case.
    assert isinstance(frame["prompt"].dtype, pd.StringDtype) and frame["prompt"].dtype.storage == "pyarrow"
    return frame


def _globals_in(blob: bytes) -> set[tuple[str, str]]:
    """(module, name) of every global a pickle refers to, from pickletools' disassembly."""
    found: set[tuple[str, str]] = set()
    strings: list[str] = []
    for opcode, arg, _ in pickletools.genops(blob):
        if opcode.name in {"SHORT_BINUNICODE", "BINUNICODE", "UNICODE"}:
            strings.append(arg)
        elif opcode.name == "STACK_GLOBAL":
            found.add((strings[-2], strings[-1]))
        elif opcode.name == "GLOBAL":
            found.add(tuple(arg.split(" ", 1)))
    return found


@pytest.mark.parametrize("protocol", [4, 5])
def test_pandas3_pickle_round_trip(tmp_path, protocol):
    frame = _pandas3_frame()
    path = tmp_path / "d.pkl"
    frame.to_pickle(path, protocol=protocol)
    assert ("pyarrow.lib", "_restore_array") in _globals_in(path.read_bytes())
    data = load_dataset(path)
    assert data.prompts == ["NA", "None", "Explain U+2028: \u2028 done"]
    assert list(data.sample_ids) == ["007", "008", "009"]
    assert data.models == ["m1", "m2"]
    np.testing.assert_array_equal(data.quality, [[1.0, 0.0], [np.nan, 1.0], [0.0, 1.0]])


def test_pandas3_pickle_with_missing_strings(tmp_path):
    frame = pd.DataFrame({"prompt": ["a", None, "c"], "task": [None, "t", "t"], "m1": [1.0, 0.0, 1.0]})
    path = tmp_path / "d.pkl"
    frame.to_pickle(path)
    data = load_dataset(path)
    assert data.prompts == ["a", "", "c"]


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickle_calling_os_system_is_refused(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_Exploit()))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_dataset(path)


def test_pickle_hiding_code_inside_a_dataframe_is_refused(tmp_path):
    frame = _pandas3_frame()
    frame["prompt"] = pd.Series([_Exploit(), "b", "c"], dtype=object)
    path = tmp_path / "evil.pkl"
    frame.to_pickle(path)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_dataset(path)


class _Calls:
    """Pickles as a call of `func(*args)`: what a crafted file would do with any global."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _other_callables():
    import pyarrow
    import pyarrow.lib

    return [
        (pyarrow.lib.frombytes, (b"x",)),
        (pyarrow.lib.Array.from_buffers, ()),
        (pyarrow.register_extension_type, (None,)),
        (pd.eval, ("1 + 1",)),
        (pd.read_pickle, ("/dev/null",)),
        (eval, ("1 + 1",)),
        (getattr, ("text", "upper")),
    ]


@pytest.mark.parametrize("index", range(7))
def test_other_pyarrow_pandas_and_builtin_globals_stay_refused(tmp_path, index):
    func, args = _other_callables()[index]
    frame = _pandas3_frame()
    frame["prompt"] = pd.Series([_Calls(func, *args), "b", "c"], dtype=object)
    blob = pickle.dumps(frame, protocol=5)
    assert ("pyarrow.lib", "_restore_array") in _globals_in(blob)  # the allowed part is there too
    path = tmp_path / "evil.pkl"
    path.write_bytes(blob)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        load_dataset(path)


def test_arrow_array_with_offsets_past_its_buffer_is_refused(tmp_path):
    frame = pd.DataFrame({"prompt": ["ab", "cd"], "m1": [1.0, 0.0]})
    blob = pickle.dumps(frame, protocol=5)
    # The large_string offsets of the prompt column are 0, 2, 4 (int64); point the last past the data.
    offsets = np.array([0, 2, 4], dtype=np.int64).tobytes()
    assert blob.count(offsets) == 1
    blob = blob.replace(offsets, np.array([0, 2, 4096], dtype=np.int64).tobytes())
    path = tmp_path / "bad.pkl"
    path.write_bytes(blob)
    with pytest.raises(pickle.UnpicklingError, match="malformed Arrow array"):
        load_dataset(path)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_all_numeric_looking_ids_stay_text_and_are_not_models(tmp_path, suffix):
    """Ids that all look like numbers ("007", "008", "010") were read as 7, 8, 10 — and a
    numeric-looking "id" column even became a model column."""
    rows = [{"sample_id": sid, "id": sid, "prompt": p, "m1": q}
            for sid, p, q in [("007", "NA", 1.0), ("008", "None", 0.0), ("010", "null", 1.0)]]
    path = tmp_path / f"d{suffix}"
    if suffix == ".csv":
        lines = [f"{r['sample_id']},{r['id']},{r['prompt']},{r['m1']}\n" for r in rows]
        path.write_text("sample_id,id,prompt,m1\n" + "".join(lines), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    data = load_dataset(path)
    assert list(data.sample_ids) == ["007", "008", "010"]
    assert data.prompts == ["NA", "None", "null"]
    assert data.models == ["m1"]
    np.testing.assert_array_equal(data.quality[:, 0], [1.0, 0.0, 1.0])
