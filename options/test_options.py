"""Test/synthesis options (pix2pix names)."""

from __future__ import annotations

import argparse
import math

from options.base_options import BaseOptions, non_negative_float_or_inf


class TestOptions(BaseOptions):
    """Flags of the test/synthesis scripts (base flags + these + the model's and dataset's)."""

    __test__ = False  # not a pytest test class
    isTrain = False
    file_prefix = "test_"

    def initialize(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser = BaseOptions.initialize(self, parser)
        parser.add_argument("--phase", default="test", help="split to run on (docs/design.md, 'Split JSON')")
        parser.add_argument("--results_dir", default="./results/", help="results go to <results_dir>/<name>/")
        parser.add_argument("--num_test", type=non_negative_float_or_inf, default=math.inf,
                            help="process at most this many vertebrae")
        parser.add_argument("--eval", action="store_true", help="evaluation mode (batch norm uses running statistics)")
        return parser
