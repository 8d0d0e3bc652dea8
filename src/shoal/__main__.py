"""python -m shoal demo | bench ..."""
import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv else "help"
    if command == "demo":
        from ._demo import main as demo
        return demo(argv)
    if command == "bench":
        from .bench.runner import main as bench
        return bench(argv)
    print("usage: python -m shoal demo | bench [--quick] [--only ID,...] [--json PATH] [--markdown PATH]")
    return 0 if command in ("help", "-h", "--help") else 2


if __name__ == "__main__":
    sys.exit(main())
