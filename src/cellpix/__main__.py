"""Allow ``python -m cellpix``; torchrun also needs a module entry point."""

from cellpix.cli import main

if __name__ == "__main__":
    main()
