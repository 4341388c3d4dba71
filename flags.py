"""Settings as flags, the same way in every script: each plain name in the configuration block at the top of a
script becomes --name (the nanoGPT way, with argparse), and --help explains it in the words of the comment
beside it, so that a setting's meaning is written once.

    max_n_epochs: int = None         # epochs the learning-rate schedule spans
    SHOW_INCORRECT = False           # also list every misclassified validation digit

gives --max_n_epochs INT (None: not given) and --show_incorrect / --no-show_incorrect.
"""
import argparse
import tokenize


def configuration_block(path):
    """{name: comment} of the script's configuration block, in order: each top-level `name = value` or
    `name: type = value` above its first import, with the comment beside it, carried on by comment lines
    indented under it ("" for none)."""
    with open(path) as script:
        tokens = list(tokenize.generate_tokens(script.readline))
    settings, current, current_line = {}, None, 0
    for token, following in zip(tokens, tokens[1:]):
        if token.type == tokenize.NAME and token.start[1] == 0:  # a statement at the top level
            if token.string in ("import", "from"):
                break
            current = token.string if following.string in ("=", ":") else None
            current_line = token.start[0]
            if current:
                settings.setdefault(current, "")
        elif token.type == tokenize.COMMENT and current:
            if token.start[0] == current_line or token.start[1] > 0:
                settings[current] = f"{settings[current]} {token.string.lstrip('#').strip()}".strip()
            else:  # a comment of its own at the top level: the setting's comment has ended
                current = None
    return settings


def settings_of(namespace):
    """{name: value} of the configuration block of the script whose globals() `namespace` is: its settings of
    a plain value (a number, a string, a bool, or None with a type annotation)."""
    annotations = namespace.get("__annotations__", {})
    values = {name: namespace.get(name, ...) for name in configuration_block(namespace["__file__"])}
    return {name: value for name, value in values.items()
            if isinstance(value, (bool, int, float, str)) or (value is None and name in annotations)}


def settings_parser(namespace, unset="not set"):
    """A parser with one flag per setting of the script whose globals() `namespace` is, named after it in lower
    case, its --help line taken from the setting's comment. A boolean becomes a switch that can be turned
    either way (--tta, --no-tta); a setting annotated and left None takes its annotation's type, and its help
    says `unset` for the default."""
    comments = configuration_block(namespace["__file__"])
    parser = argparse.ArgumentParser(description=namespace.get("__doc__"),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in settings_of(namespace).items():
        # argparse reads % in a help string as a format code; a comment's "99.0%" is prose
        flag, meaning = "--" + name.lower(), comments.get(name, "").replace("%", "%%")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{meaning} (default: {'on' if default else 'off'})")
            continue
        kind = type(default) if default is not None else namespace["__annotations__"][name]
        shown = unset if default is None else repr(default) if isinstance(default, str) else default
        parser.add_argument(flag, dest=name, type=kind, default=default, metavar=kind.__name__.upper(),
                            help=f"{meaning} (default: {shown})".strip())
    return parser
