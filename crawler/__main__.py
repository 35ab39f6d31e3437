"""The program's entry, for `crawler` and `python -m crawler`: the command line, imported with the collector off."""

import gc
import sys


def main() -> int:
    # The imports make tens of thousands of objects that live as long as the program: collecting
    # while they are made only walks them, and frozen they stay out of every later collection.
    gc.disable()
    try:
        from crawler.cli import run
    finally:
        gc.freeze()
        gc.enable()
    return run()


if __name__ == "__main__":
    sys.exit(main())
