"""Rank 0's script in test_mpi_shared.py: pytest over shared test bodies, inside an MPI job."""
import sys

import pytest

if __name__ == "__main__":
    sys.exit(pytest.main(sys.argv[1:]))
