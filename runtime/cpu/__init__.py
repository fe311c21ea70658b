"""radixgen's CPU kernels: C sources built on first use (``build``) and their Python entry points (``ops``)."""
