"""varnet_ds: memory-optimized DeepSpeed trainer for fastMRI's End-to-End VarNet."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
REQS = [
    line.strip()
    for line in (HERE / "requirements.txt").read_text().splitlines()
    if line.strip() and not line.startswith("#")
]

setup(
    name="varnet_ds",
    version="0.1.0",
    description="Memory-optimized DeepSpeed ZeRO-2 trainer for fastMRI VarNet (knee->brain, MRAugment)",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["varnet_ds", "varnet_ds.*"]),
    package_data={"varnet_ds": ["conf/*.yaml"]},
    # torch is pinned by the Makefile (TORCH_SPEC); fastmri is installed with --no-deps because its
    # declared torchvision/lightning requirements break beside a CPU torch. Their real needs are here.
    install_requires=["torch>=2.1", "fastmri==0.3.0", *REQS],
    extras_require={"dev": ["pytest>=7.4", "ruff>=0.5"]},
    entry_points={
        "console_scripts": [
            "varnet-synth=varnet_ds.sim.synth:main",
            "varnet-check=varnet_ds.data.check:main",
            "varnet-evaluate=varnet_ds.evaluate:main",
            "varnet-bench=varnet_ds.bench:main",
        ]
    },
)
