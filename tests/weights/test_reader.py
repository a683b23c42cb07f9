"""The one weight reader: formats, checksums, dtypes, keys and one-line errors that name the file."""

from __future__ import annotations

import io
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from seesr.weights.reader import (
    WeightReadError,
    check_keys,
    check_tensors,
    file_sha256,
    read_state_dict,
    read_tensor_specs,
    read_torch_object,
)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def state() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.randn(4, 3), "a.bias": torch.randn(4), "ids": torch.arange(5)}


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin", ".ckpt"])
def test_reads_each_format_exactly(tmp_path, state, suffix):
    path = tmp_path / f"w{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    loaded = read_state_dict(path)
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[key], state[key]) for key in state)


def test_legacy_pickle_format_and_nested_entry(tmp_path, state):
    path = tmp_path / "legacy.pth"
    torch.save({"model": state, "epoch": 3}, path, _use_new_zipfile_serialization=False)  # cannot be mmapped
    loaded = read_state_dict(path, entry="model")
    assert torch.equal(loaded["a.weight"], state["a.weight"])


def test_dtype_policy_casts_floats_only(tmp_path, state):
    path = tmp_path / "w.safetensors"
    save_file(state, path)
    loaded = read_state_dict(path, dtype=torch.bfloat16)
    assert loaded["a.weight"].dtype == torch.bfloat16 and loaded["ids"].dtype == torch.int64


def test_sha256_checked(tmp_path, state):
    path = tmp_path / "w.safetensors"
    save_file(state, path)
    read_state_dict(path, sha256=file_sha256(path).upper())
    with pytest.raises(WeightReadError, match="sha256") as error:
        read_state_dict(path, sha256="0" * 64)
    assert str(path) in _one_line(error) and "delete it and download again" in str(error.value)


def test_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        read_state_dict(tmp_path / "nope.pth")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file_says_delete_and_download(tmp_path, state, suffix):
    path = tmp_path / f"w{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightReadError) as error:
        read_state_dict(path)
    message = _one_line(error)
    assert str(path) in message and "corrupt or truncated" in message and "delete it and download again" in message


def test_empty_file(tmp_path):
    path = tmp_path / "w.bin"
    path.write_bytes(b"")
    with pytest.raises(WeightReadError, match="empty.*delete it and download again"):
        read_state_dict(path)


@pytest.mark.parametrize("legacy", [False, True])
def test_pickle_payload_is_refused_and_never_runs(tmp_path, legacy):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "payload.bin"
    if legacy:
        path.write_bytes(pickle.dumps({"a": _Payload(marker)}))
    else:
        torch.save({"a": _Payload(marker)}, path)
    with pytest.raises(WeightReadError) as error:
        read_state_dict(path)
    message = _one_line(error)
    assert str(path) in message and "refused" in message and "pickled" in message
    with pytest.raises(WeightReadError, match="refused") as error_object:
        read_torch_object(path)
    # the refusal never passes on torch's advice to allow-list what the payload asks for
    for text in (message, str(error_object.value)):
        assert "safe_globals" not in text and "allowlist" not in text
    assert not marker.exists()


def test_int8_tensor_is_refused_by_name(tmp_path, state):
    path = tmp_path / "w.safetensors"
    save_file({**state, "q.weight": torch.zeros(2, 2, dtype=torch.int8)}, path)
    with pytest.raises(WeightReadError) as error:
        read_state_dict(path)
    message = _one_line(error)
    assert str(path) in message and "q.weight (torch.int8)" in message and "unsupported dtype" in message


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "w.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightReadError, match="flat"):
        read_state_dict(path)
    assert isinstance(read_torch_object(path), list)  # plain objects are fine for read_torch_object


def test_check_keys_lists_first_n_then_count():
    expected = [f"k{i:02d}" for i in range(20)]
    state = expected[:5] + [f"x{i:02d}" for i in range(11)]
    with pytest.raises(WeightReadError) as error:
        check_keys(state, expected, source="file.safetensors", limit=3)
    message = _one_line(error)
    assert message.startswith("file.safetensors: ")
    assert "15 missing key(s): k05, k06, k07, ... and 12 more" in message
    assert "11 unexpected key(s): x00, x01, x02, ... and 8 more" in message
    check_keys(state, expected[:5], source="f", strict=False)  # extra keys allowed when not strict


def test_check_tensors_shapes_and_float_kind(tmp_path):
    with torch.device("meta"):
        model = torch.nn.Linear(3, 4)
    expected = model.state_dict()
    good = {"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}
    check_tensors(good, expected, source="f")
    with pytest.raises(WeightReadError, match=r"wrong shape: weight \(4, 2\) vs model \(4, 3\)"):
        check_tensors({**good, "weight": torch.zeros(4, 2)}, expected, source="f")
    with pytest.raises(WeightReadError, match=r"non-floating-point.*bias \(int64\)"):
        check_tensors({**good, "bias": torch.zeros(4, dtype=torch.int64)}, expected, source="f")
    path = tmp_path / "w.safetensors"
    save_file({"weight": torch.zeros(4, 3, dtype=torch.int8), "bias": torch.zeros(4)}, path)
    specs = read_tensor_specs(path)  # header only: nothing loaded
    assert specs["weight"] == ((4, 3), "I8")
    with pytest.raises(WeightReadError, match=r"weight \(I8\)"):
        check_tensors(specs, expected, source=path)


def test_a_misnamed_safetensors_file_is_still_read(tmp_path, state):
    path = tmp_path / "diffusion_pytorch_model.bin"
    save_file(state, path)
    assert torch.equal(read_state_dict(path)["a.weight"], state["a.weight"])


class _OpenPayload:
    """A global torch does not block outright (it suggests allow-listing it instead)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (io.open, (str(self.marker), "w"))


def test_refusal_does_not_pass_on_the_advice_to_allow_list_the_payload(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "payload.pth"
    torch.save({"a": _OpenPayload(marker)}, path)
    for reader in (read_state_dict, read_torch_object):
        with pytest.raises(WeightReadError) as error:
            reader(path)
        message = _one_line(error)
        assert "refused" in message and "io.open" in message
        assert "safe_globals" not in message and "allowlist" not in message
    assert not marker.exists()
