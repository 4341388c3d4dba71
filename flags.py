"""Settings as flags: each plain name at the top of a script becomes --name (the nanoGPT way, with argparse)."""
import argparse


def settings_parser(defaults, description):
    """A parser with one flag per setting, named after it in lower case: a boolean setting becomes a switch
    (--show_incorrect), any other takes a value of its default's type; --help lists them with their defaults."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in defaults.items():
        flag = "--" + name.lower()
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, action="store_true", help="(default: off)")
        else:
            parser.add_argument(flag, dest=name, type=type(default), default=default,
                                metavar=type(default).__name__.upper(), help=f"(default: {default})")
    return parser
