"""Speed, measured: `python bench.py --help` (the benchmark package, benchmark/)."""
from benchmark.cli import main
from common.errors import run_command

if __name__ == "__main__":
    run_command(main)
