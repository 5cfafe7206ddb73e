"""Defined terms as enums: one validator each, string-compatible where values are user-facing."""

from __future__ import annotations

import json

import pytest

from medviewer.inference import PROVIDER_CHOICES, ExecutionProvider, Provider
from medviewer.inference._ort import short_name


@pytest.mark.parametrize("text", ["auto", "cuda", "cpu"])
def test_provider_round_trip(text):
    member = Provider.parse(text)
    assert member.value == text and str(member) == text and f"{member}" == text
    assert Provider.parse(member) is member
    assert Provider.parse(f"  {text.upper()} ") is member
    assert json.loads(json.dumps({"provider": member})) == {"provider": text}  # results.json / settings


@pytest.mark.parametrize("bad", ["tpu", "", None, 1, "CUDAExecutionProvider"])
def test_provider_rejects_anything_else_in_one_line(bad):
    with pytest.raises(ValueError, match=r"^unknown provider .*; use auto, cuda or cpu$"):
        Provider.parse(bad)


def test_provider_choices_are_the_argparse_choices():
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--provider", choices=PROVIDER_CHOICES)
    assert parser.parse_args(["--provider", "cuda"]).provider == "cuda"
    with pytest.raises(SystemExit):
        parser.parse_args(["--provider", "gpu"])
    assert PROVIDER_CHOICES == ("auto", "cuda", "cpu")


def test_execution_providers_asked_of_onnxruntime():
    cpu, cuda = ExecutionProvider.CPU.value, ExecutionProvider.CUDA.value
    assert (cpu, cuda) == ("CPUExecutionProvider", "CUDAExecutionProvider")
    with_cuda = [cuda, cpu]
    assert Provider.AUTO.execution_providers(with_cuda) == [cuda, cpu]
    assert Provider.CUDA.execution_providers(with_cuda) == [cuda, cpu]
    assert Provider.CPU.execution_providers(with_cuda) == [cpu]
    assert Provider.CUDA.execution_providers([cpu]) == [cpu]
    assert ExecutionProvider.CUDA.short == "cuda" and short_name("TensorrtExecutionProvider") == "tensorrt"


def test_onnxruntime_names_match_the_installed_build():
    ort = pytest.importorskip("onnxruntime")
    assert ExecutionProvider.CPU.value in ort.get_available_providers()
    assert ExecutionProvider(ort.get_available_providers()[-1]) is ExecutionProvider.CPU
