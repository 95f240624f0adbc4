"""Speed benchmark, side by side with torch.nn: ``python benchmarks/bench.py [--out FILE.csv] [--quick]``.

The same as ``adaptrnn bench``; see ``adaptrnn.bench`` for what is timed and how the
computation fractions are controlled.
"""

import argparse
import sys

from adaptrnn import bench

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="benchmarks/bench.py", description=bench.__doc__.splitlines()[0])
    bench.add_arguments(parser)
    sys.exit(bench.run(parser.parse_args()))
