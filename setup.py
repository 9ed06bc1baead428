"""Only here to hand the cffi extension to setuptools; metadata is in pyproject.toml."""

from setuptools import setup

# cffi compiles for the stable ABI (Py_LIMITED_API): one cp39-abi3 wheel serves 3.9 and newer
setup(cffi_modules=["build_ffi.py:ffibuilder"], options={"bdist_wheel": {"py_limited_api": "cp39"}})
