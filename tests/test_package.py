"""`import mmgen` is all a user needs: it re-exports the public names of the four packages."""

import importlib

import pytest

import mmgen


@pytest.mark.parametrize("package", ["tokenizers_visual", "tokenizers_audio", "pipelines"])
def test_sibling_public_names_are_reexported(package):
    module = importlib.import_module(package)
    for name in getattr(module, "__all__", ()):
        assert getattr(mmgen, name) is getattr(module, name)


def test_core_names_and_unknown_attribute():
    for name in mmgen.__all__:
        assert getattr(mmgen, name) is not None
    assert "VQImageTokenizer" in dir(mmgen)
    with pytest.raises(AttributeError, match="no attribute 'NoSuchThing'"):
        mmgen.NoSuchThing
