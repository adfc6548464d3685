"""Packaging: fastsrnn plus the Triton kernels (kernels/) and the C++/CUDA sources (csrc/).

kernels/ and csrc/ live at the top of the repository (docs/DESIGN.md §1) but ship inside the
installed package as ``fastsrnn.kernels`` and ``fastsrnn.csrc`` so that a plain ``pip install .``
can JIT-build and import them.
"""
from setuptools import setup

setup(
    packages=["fastsrnn", "fastsrnn.backends", "fastsrnn.data", "fastsrnn.generation", "fastsrnn.ops",
              "fastsrnn.quality", "fastsrnn.tools", "fastsrnn.training", "fastsrnn.kernels", "fastsrnn.csrc"],
    package_dir={"fastsrnn.kernels": "kernels", "fastsrnn.csrc": "csrc"},
    package_data={"fastsrnn.csrc": ["cpu/*.cpp", "cpu/*.h", "cuda/*.cu", "cuda/*.cpp", "cuda/*.h", "cuda/*.cuh"]},
)
